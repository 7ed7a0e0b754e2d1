"""End to end: ``ray start --head`` then ``ray job submit --working-dir . -- python -m services.grpo_job``.

A real single-node Ray cluster on free loopback ports with its own temp dir, the job uploaded as a
working dir (``.venv``, runs and checkpoints excluded through ``runtime_env`` excludes), the minimal
two-stage config on a tiny random Qwen3. The job must finish with status SUCCEEDED and leave metrics,
evaluations, per-stage HF exports and plots. The cluster is stopped by killing exactly the processes
it started (found by its unique temp dir): ``ray stop`` would also stop other Ray clusters on the
machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, ray_node_ports, stop_processes_under

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EXCLUDES = [".venv", ".venv/**", ".git", "runs", "outputs", "checkpoints", "**/__pycache__", "*.egg-info",
            ".pytest_cache", ".hypothesis", ".whl", ".ci"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("model") / "tiny-qwen3")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    temp_dir = Path("/tmp") / f"fwray{os.getpid()}"  # short: Ray's socket paths have a length limit
    # every port explicit and free: other Ray clusters on the machine hold the defaults (agent 52365, ...)
    gcs, dash = free_port(), free_port()
    # token authentication with this cluster's own token (not the user's ~/.ray/auth_token)
    import secrets

    token_file = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "4",
           "--temp-dir", str(temp_dir), "--include-dashboard", "true", "--disable-usage-stats",
           *ray_node_ports(head=True), "--min-worker-port", "0", "--max-worker-port", "0"]
    start = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield {"address": f"http://127.0.0.1:{dash}", "env": env, "temp_dir": temp_dir}
    finally:
        stop_processes_under([temp_dir])
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(1800)  # ~3 min on an idle 2-core machine; vLLM start-up alone took 8 min under load 20
def test_ray_job_submit_runs_the_grpo_job(ray_cluster, tiny_model, tmp_path):
    out = tmp_path / "grpo"
    runtime_env = {"excludes": EXCLUDES,
                   "env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                "RAY_USAGE_STATS_ENABLED": "0"}}
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_cluster["address"], "--working-dir", ".",
           "--runtime-env-json", json.dumps(runtime_env), "--",
           "python", "-m", "services.grpo_job", "--config", "configs/grpo_test.yaml",
           "--model", str(tiny_model), "--output_dir", str(out)]
    t0 = time.time()
    for _ in range(12):  # the dashboard's job agent can take a while to come up on a loaded machine
        proc = subprocess.run(cmd, cwd=REPO, env=ray_cluster["env"], capture_output=True, text=True, timeout=1500)
        log = proc.stdout + proc.stderr
        if "No available agent to submit job" not in log:
            break
        time.sleep(5)
    assert proc.returncode == 0, log[-6000:]
    assert "succeeded" in log.lower(), log[-3000:]

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [1, 2]
    assert [r["stage"] for r in rows] == [0, 1]
    versions = [r["version"] for r in rows]
    assert versions == sorted(versions) and versions[0] >= 1, versions
    for r in rows:
        assert r["samples"] == 4 * 4  # prompts_per_step x group_size
        assert "reward_mean" in r and "staleness_histogram" in r and "weight_sync_s" in r
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["label"] for e in evals] == ["start", "short", "long"]
    assert all(0.0 <= e["avg@2"] <= 1.0 for e in evals)
    for stage in ("short", "long"):
        assert (out / f"{stage}_hf" / "model.safetensors").is_file()
        assert (out / f"{stage}_hf" / "config.json").is_file()
    assert (out / "reward.png").is_file() and (out / "accuracy.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] == ["steps", "steps"] and summary["global_step"] == 2
    print(f"ray job submit -> SUCCEEDED in {time.time() - t0:.0f}s")
