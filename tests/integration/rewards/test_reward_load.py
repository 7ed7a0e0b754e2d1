"""Sustained concurrent load on a real ``flywheel serve-reward`` process (started by ``bench/load.py``):
HTTP and gRPC batch verification from 8 concurrent clients, alternating clean blocks with blocks where
every 10th request is hostile (malformed bodies, invalid wire messages, batches of hostile items). No
normal request fails, nothing gets a 5xx, every hostile request gets its expected answer, the server is
healthy afterwards and its memory stays flat. Latency and the hostile/clean p99 ratio are reported by the
driver, not asserted (docs/rewards.md has the numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_reward_service_under_sustained_load_with_hostile_requests(tmp_path):
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, "bench/load.py", "--service", "reward", "--seconds", "6", "--block", "3",
                        "--warmup", "2", "--concurrency", "8", "--sample-every", "2", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())["reward"]
    print(r.stdout)
    assert set(res["endpoints"]) == {"reward HTTP /v1/verify", "reward gRPC Verify"}
    assert res["server_errors"] == 0
    for name, blocks in res["endpoints"].items():
        for kind, e in blocks.items():
            assert e["requests"] > 0 and e["errors"] == 0, (name, kind, e["samples"])
        assert blocks["hostile"]["hostile"] > 0, name
        assert blocks["hostile"]["hostile_expected"] == blocks["hostile"]["hostile"], (name, blocks["hostile"])
    assert res["health_after"] == 200
    assert res["exit_code"] == 0  # drained and stopped cleanly after the load
    [mem] = res["memory"].values()
    assert len(mem["rss_mib"]) >= 3 and mem["growth_mib"] < 100 and mem["tree_growth_mib"] < 100, mem
    assert r.returncode == 0, r.stdout[-3000:]
