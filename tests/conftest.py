"""Suite-wide fixtures and markers.

- ``gpu`` tests skip (with the reason) when no CUDA device is visible.
- ``redis_url``: a real ``redis-server`` on a free loopback port for the whole session.
- ``free_port()``: a free TCP port (``learner.actor.free_port``, re-exported for the tests).
- ``stop_processes_under(temp_dirs)``: end the processes (and children) of a Ray cluster started with
  ``--temp-dir`` in one of ``temp_dirs`` (``ray stop`` would stop every cluster on the machine).
"""

from __future__ import annotations

import os
import signal
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from learner.actor import free_port  # noqa: F401  (re-exported; light: no torch at import)

REPO = Path(__file__).resolve().parents[1]


def stop_processes_under(temp_dirs: list[Path]) -> None:
    """SIGTERM (then SIGKILL after 15 s) the processes whose command line names one of ``temp_dirs``."""
    import psutil

    keys = [str(t) for t in temp_dirs]
    me = psutil.Process()
    spare = {me.pid} | {p.pid for p in me.parents()}  # never this test process or its ancestors
    procs = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid not in spare and any(k in part for part in (p.info["cmdline"] or []) for k in keys):
                for q in [p, *p.children(recursive=True)]:
                    if q.pid not in spare:
                        procs[q.pid] = q
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in procs.values():
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def ray_node_ports(head: bool) -> list[str]:
    """``ray start`` flags giving one node every port of its own, free now: another Ray on the machine (a
    second node of the same test cluster, a job's local Ray) holds the defaults (dashboard agent 52365, ...),
    and a node whose agent cannot bind them never accepts ``ray job submit`` ("No available agent")."""
    names = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port", "--object-manager-port", "--node-manager-port"]
    names += ["--ray-client-server-port"] if head else []
    return [x for name in names for x in (name, str(free_port()))]


def terminate(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM a server process, SIGKILL it after ``timeout`` s; returns its exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    """Start a throwaway redis-server (no persistence) and wait until it answers PING."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed; run `bash deploy/setup.sh` (it installs it)")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            if client.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer on port {port}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session", autouse=True)
def _quiet_env():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield
