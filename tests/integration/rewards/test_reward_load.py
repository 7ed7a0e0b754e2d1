"""Sustained concurrent load on a real ``flywheel serve-reward`` process (started by ``bench/load.py``):
HTTP and gRPC batch verification from 8 concurrent clients for a few seconds, bad requests mixed in. No
good request fails, every bad one gets its refusal, the server is healthy afterwards and its memory stays
flat. Throughput and latency are reported by the driver, not asserted (docs/deploy.md has the numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_reward_service_under_sustained_load(tmp_path):
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, "bench/load.py", "--service", "reward", "--seconds", "12", "--warmup", "2",
                        "--concurrency", "8", "--bad-every", "5", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())["reward"]
    print(r.stdout)
    assert set(res["endpoints"]) == {"reward HTTP /v1/verify", "reward gRPC Verify"}
    for name, e in res["endpoints"].items():
        assert e["requests"] > 0 and e["errors"] == 0, (name, e["error_samples"])
        assert e["bad"] > 0 and e["bad_refused"] == e["bad"], (name, e["error_samples"])
    assert res["health_after"] == 200
    assert res["exit_code"] == 0  # drained and stopped cleanly after the load
    [mem] = res["memory"].values()
    assert mem["growth_mib"] < 100 and mem["tree_growth_mib"] < 100, mem
    assert r.returncode == 0, r.stdout[-3000:]
