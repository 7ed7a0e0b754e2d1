"""The services start with exactly the command their Kubernetes Deployment runs, and the endpoint the
Deployment's probes call answers 200 on the probed port. Only the bind address and the ports are
overridden (127.0.0.1 and free ports: tests never listen beyond loopback); everything else, config file
included, is the manifest's. The rollout server (a vLLM engine) runs only with ``-m slow``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from learner.actor import free_port
from tests.conftest import terminate

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
FLYWHEEL = Path(sys.executable).parent / "flywheel"


def _deployment(file: str) -> dict:
    docs = [d for d in yaml.safe_load_all((K8S / file).read_text()) if d and d["kind"] == "Deployment"]
    assert len(docs) == 1
    return docs[0]


def _local_command(container: dict, overrides: dict[str, str]) -> list[str]:
    """The container's command with /app paths mapped to this checkout and the given overrides appended."""
    argv = [str(REPO / a[len("/app/"):]) if a.startswith("/app/") else a for a in container["command"]]
    assert argv[0] == "flywheel"
    for key, value in overrides.items():
        argv += [f"--{key}", value]
    return [str(FLYWHEEL), *argv[1:]]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited with {proc.returncode}:\n{proc.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f}s")


def _probe_urls(container: dict, ports: dict[str, int]) -> list[str]:
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    urls = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            http = container[kind]["httpGet"]
            name = http["port"] if isinstance(http["port"], str) else \
                next(n for n, p in declared.items() if p == http["port"])
            urls.append(f"http://127.0.0.1:{ports[name]}{http['path']}")
    return urls


def _run_and_probe(container: dict, extra: dict[str, str], timeout: float) -> None:
    ports = {"http": free_port(), "grpc": free_port()}
    cmd = _local_command(container, {"host": "127.0.0.1", "http_port": str(ports["http"]),
                                     "grpc_port": str(ports["grpc"]), **extra})
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        urls = _probe_urls(container, ports)
        assert urls, "the Deployment has no HTTP probes"
        for url in urls:
            status, body = _wait_http(url, proc, timeout)
            assert status == 200, (url, status, body[:200])
            json.loads(body)  # a health document, not an error page
    finally:
        terminate(proc, timeout=30)


def test_reward_server_answers_its_probes_with_the_manifest_command():
    container = _deployment("reward-server.yaml")["spec"]["template"]["spec"]["containers"][0]
    _run_and_probe(container, {}, timeout=90)


@pytest.mark.slow
def test_rollout_server_answers_its_probes_with_the_manifest_command(tmp_path, monkeypatch):
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3

    monkeypatch.setenv("FLYWHEEL_ROLLOUT_TOKEN", "probe-test-token")  # the manifest's Secret; required to start

    model = build_tiny_qwen3(tmp_path / "tiny-qwen3")
    container = _deployment("rollout-server.yaml")["spec"]["template"]["spec"]["containers"][0]
    # CPU here: no GPU per worker, a small KV cache; the rest (config file, probes) as in the manifest
    _run_and_probe(container, {"model": str(model), "rollout.num_gpus_per_worker": "0",
                               "rollout.kv_cache_gib": "1", "rollout.max_model_len": "256"}, timeout=600)
