"""Shared, expensive things for the rollout integration tests: one tiny checkpoint, one Ray
cluster, ONE vLLM rollout worker, and one running service (HTTP + gRPC) over that worker."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from tests.conftest import free_port

TOKEN = "test-token"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3

    return str(build_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3")))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def rollout_cfg(tiny_model):
    from rollout.config import RolloutConfig

    return RolloutConfig(model=tiny_model, dtype="float32", max_model_len=1024, kv_cache_gib=1,
                         max_in_flight=8, num_cpus_per_worker=1)


@pytest.fixture(scope="session")
def worker(ray_session, rollout_cfg):
    from rollout.worker import create_workers

    [w] = create_workers(rollout_cfg, name_prefix="it-rollout")
    yield w
    try:
        ray_session.get(w.shutdown.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - best effort at teardown
        pass
    ray_session.kill(w)


@pytest.fixture(scope="session")
def service(worker, rollout_cfg, tiny_model):
    """The rollout service (HTTP + gRPC) on free loopback ports, in a background thread."""
    from rollout.fleet import RolloutFleet
    from services.rollout_app import serve
    from services.rollout_server import RolloutServerConfig, RolloutService, load_tokenizer

    cfg = RolloutServerConfig(model=tiny_model, rollout=rollout_cfg, http_port=free_port(), grpc_port=free_port(),
                              auth_token=TOKEN, max_tokens=256, max_n=8, max_prompt_tokens=256,
                              weights_root=os.path.dirname(tiny_model))
    svc = RolloutService(cfg, RolloutFleet([worker], rollout_cfg.max_in_flight), load_tokenizer(tiny_model))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        ready = asyncio.Event()
        state["stop"] = stop

        async def main() -> None:
            task = asyncio.create_task(serve(svc, cfg, started=ready, stop=stop))
            await ready.wait()
            started.set()
            await task

        try:
            loop.run_until_complete(main())
        except Exception as e:  # noqa: BLE001 - surfaced through state
            state["error"] = e
            started.set()

    t = threading.Thread(target=run, daemon=True, name="rollout-service")
    t.start()
    assert started.wait(60), "rollout service did not start"
    if "error" in state:
        raise state["error"]
    yield {"cfg": cfg, "service": svc, "http": f"http://127.0.0.1:{cfg.http_port}",
           "grpc": f"127.0.0.1:{cfg.grpc_port}", "token": TOKEN}
    loop.call_soon_threadsafe(state["stop"].set)
    t.join(timeout=15)


@pytest.fixture(scope="session")
def pushed_weights():
    """version -> state dict the shared worker was given (None: the checkpoint's own weights).
    Every test that pushes weights records them here, so later tests know what the worker holds."""
    return {0: None}
