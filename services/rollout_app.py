"""``flywheel serve-rollout``: the process. Refuses an unsafe or impossible config before anything
starts, starts Ray (token-authenticated when it is ours) and the vLLM workers, then runs the HTTP and
gRPC servers and the engine health loop until a signal, or until no engine can come back (exit 1).

Exit codes: 0 stopped by a signal; 1 the engines died for good while serving; 2 refused at start-up
(no token without ``insecure_no_auth``, a broken checkpoint, an engine that did not start: one line
on stderr naming the cause).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from pathlib import Path

from services.rollout_server import RolloutServerConfig, RolloutService, load_tokenizer

log = logging.getLogger("flywheel.rollout_server")


def refuse(cfg: RolloutServerConfig) -> str | None:
    """Why this config must not start (one line), or None."""
    model = cfg.rollout.model
    if not Path(model).exists() and "/" not in model:
        return f"model {model!r} not found (pass --model CHECKPOINT_DIR)"
    if Path(model).is_dir():
        from pretraining.checkpoint import CheckpointError, check_weights

        try:  # before Ray and vLLM start: their failure would surface in a worker's log, not here
            check_weights(model)
        except (CheckpointError, FileNotFoundError) as e:
            return f"cannot serve {model}: {e}"
    if not cfg.token() and not cfg.insecure_no_auth:
        return (f"no bearer token for the state-changing endpoints (/v1/weights, gRPC LoadWeights): set "
                f"{cfg.auth_token_env} (or auth_token), or pass --insecure_no_auth true to serve them to anyone "
                f"who can reach {cfg.host}")
    return None


async def serve(service: RolloutService, cfg: RolloutServerConfig, started: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run the HTTP and gRPC servers and the health loop until ``stop`` is set (or the task is cancelled),
    or until the health loop finds every engine gone for good (``service.health.fatal``)."""
    import uvicorn

    from services.rollout_grpc import start_grpc
    from services.rollout_http import build_app

    stop = stop or asyncio.Event()
    health_task = asyncio.create_task(_health_loop(service, stop))
    grpc_server = await start_grpc(service, cfg.host, cfg.grpc_port) if cfg.grpc_port else None
    http = None
    if cfg.http_port:
        http = uvicorn.Server(uvicorn.Config(build_app(service), host=cfg.host, port=cfg.http_port,
                                             log_level="warning", lifespan="off",
                                             limit_concurrency=max(64, 4 * cfg.max_prompts_per_request)))
        http_task = asyncio.create_task(http.serve())
        while not http.started and not http_task.done():
            await asyncio.sleep(0.02)
        if http_task.done():
            http_task.result()
    log.info("serving %s: http://%s:%d  grpc %s:%d", service.model_name, cfg.host, cfg.http_port, cfg.host,
             cfg.grpc_port)
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        health_task.cancel()
        if http is not None:
            http.should_exit = True
            await http_task
        if grpc_server is not None:
            await grpc_server.stop(grace=2.0)


async def _health_loop(service: RolloutService, stop: asyncio.Event) -> None:
    await service.health.run(stop)
    if service.health.fatal is not None:
        stop.set()


def start_ray(cfg: RolloutServerConfig) -> None:
    """Join ``ray_address``, or start a local Ray that only token holders can use: Ray binds its ports
    on every interface and will not bind to loopback only (it rewrites 127.0.0.1 to the node's address),
    so its own token authentication is what keeps other hosts out."""
    own = cfg.ray_address in (None, "local")
    if own and not os.environ.get("RAY_AUTH_MODE"):  # Ray's own default would share ~/.ray/auth_token
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        if "ray" in sys.modules:  # Ray caches its config at import: make it read the environment again
            from ray._raylet import Config

            Config.initialize("")
    elif own and os.environ["RAY_AUTH_MODE"].lower() != "token":
        log.warning("RAY_AUTH_MODE=%s: the local Ray cluster accepts anyone who can reach this host's Ray ports "
                    "(it listens on every interface)", os.environ["RAY_AUTH_MODE"])
    import ray

    ray.init(address="local" if own else cfg.ray_address, include_dashboard=False, ignore_reinit_error=True)


def main(cfg: RolloutServerConfig) -> int:
    import signal

    why = refuse(cfg)
    if why:
        log.error("%s", why)  # the log (with the run's other lines) and stderr, one line each
        print(f"flywheel serve-rollout: {why}", file=sys.stderr)
        return 2
    if cfg.insecure_no_auth and not cfg.token():
        log.warning("--insecure_no_auth: /v1/weights and gRPC LoadWeights accept anyone who can reach %s", cfg.host)
    start_ray(cfg)  # before anything imports Ray (its auth settings are read once)
    import ray

    from rollout.engine_startup import EngineStartError
    from rollout.fleet import RolloutFleet
    from rollout.worker import create_workers

    log.info("starting %d rollout worker(s) for %s (max_model_len %d, dtype %s)", cfg.rollout.num_workers,
             cfg.rollout.model, cfg.rollout.max_model_len, cfg.rollout.describe_dtype())
    try:
        workers = create_workers(cfg.rollout)
    except EngineStartError as e:
        print(f"flywheel serve-rollout: {e}", file=sys.stderr)
        return 2
    fleet = RolloutFleet(workers, cfg.rollout.max_in_flight)
    service = RolloutService(cfg, fleet, load_tokenizer(cfg.rollout.model))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(service, cfg, stop=stop)

    try:
        asyncio.run(run())
    finally:
        for w in workers:
            ray.kill(w)
    if service.health.fatal is not None:
        print(f"flywheel serve-rollout: {service.health.fatal}", file=sys.stderr)
        return 1
    return 0
