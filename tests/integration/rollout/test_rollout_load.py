"""Sustained concurrent load on the rollout service API (the session's service over its one vLLM worker,
so no extra engine start): ``/v1/completions`` and ``/v1/rollouts`` from 8 concurrent clients of
``bench/load.py`` (a separate process) for a few seconds, with malformed JSON, too-long prompts, ``n``
too large and an unknown model mixed in. No good request fails, every bad one gets its 4xx, the service
is healthy afterwards, and neither the process serving HTTP (this one) nor the rollout worker's processes
grow by more than a generous bound. Latency numbers are reported by the driver, not asserted (docs/deploy.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[3]


def test_rollout_service_under_sustained_load(service, worker, ray_session, tmp_path):
    worker_pid = ray_session.get(worker.__ray_call__.remote(lambda self: os.getpid()), timeout=60)
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, "bench/load.py", "--service", "rollout", "--rollout-url", service["http"],
                        "--pid", str(os.getpid()), "--pid", str(worker_pid), "--seconds", "12", "--warmup", "3",
                        "--concurrency", "8", "--bad-every", "5", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout)
    res = json.loads(out.read_text())["rollout"]
    assert set(res["endpoints"]) == {"rollout HTTP /v1/completions", "rollout HTTP /v1/rollouts"}
    for name, e in res["endpoints"].items():
        assert e["requests"] > 0 and e["errors"] == 0, (name, e["error_samples"])
        assert e["bad"] > 0 and e["bad_refused"] == e["bad"], (name, e["error_samples"])
    assert res["health_after"] == 200
    server, worker_tree = res["memory"][str(os.getpid())], res["memory"][str(worker_pid)]
    assert server["growth_mib"] < 100, {k: v for k, v in server.items() if k != "processes"}
    assert worker_tree["processes"], worker_tree
    for p in worker_tree["processes"]:  # the worker actor, vLLM's engine core and its model-runner process
        # vLLM's model runner (VLLM::Worker) grows its malloc heap while it first serves: +173 MiB in the first
        # 75 s of a fresh engine, then +38 MiB in the next 225 s (docs/deploy.md, "Load"); not our code, so
        # it gets a bound that catches a runaway leak only. Everything else: 100 MiB.
        bound = 300 if p["name"] == "VLLM::Worker" else 100
        assert p["growth_mib"] < bound, p
    h = httpx.get(service["http"] + "/healthz", timeout=30).json()
    assert h["status"] == "ok" and h["queue_depth"] == 0 and h["in_flight"] == 0
    assert r.returncode == 0, r.stdout[-3000:]
