"""The reward verifier microservice: ``flywheel serve-reward``.

One process serves the same verifier over HTTP (FastAPI: ``POST /v1/verify``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics``, OpenAPI docs at ``/docs``; ``services.reward_http``) and gRPC
(``protos/reward.proto``: unary ``Verify``, bidirectional ``VerifyStream``, standard health checking;
``services.reward_grpc``). Both adapt one core, ``services.reward_service.RewardService``, so verdicts
are identical; this module only composes them (nothing imports it but the CLI).

Binds 127.0.0.1 by default; an optional bearer token guards both APIs (docs/security.md). On
SIGTERM/SIGINT health turns NOT_SERVING / 503 at ``/readyz``, new verify requests are refused, and
in-flight ones are drained before exit.
"""

from __future__ import annotations

import logging
import threading
import time

from services.reward_service import RewardServerConfig

__all__ = ["RewardServerConfig", "main"]

log = logging.getLogger("flywheel.reward_server")


def _draining_server_class(on_signal):
    import contextlib
    import signal

    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, minus re-raising the signal after shutdown (so our clean-up runs, exit 0)."""

        def handle_exit(self, sig, frame) -> None:
            on_signal()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)
                if getattr(self, "_captured_signals", None):
                    log.info("signal received: drained in-flight HTTP requests")

    return DrainingServer


def main(cfg: RewardServerConfig) -> int:
    """Run both APIs until SIGINT/SIGTERM, then drain in-flight requests and exit."""
    from services.reward_grpc import start_grpc_server
    from services.reward_http import build_app
    from services.reward_service import RewardService

    if cfg.http_port == 0 and cfg.grpc_port == 0:
        log.error("both http_port and grpc_port are 0: nothing to serve")
        return 2
    t0 = time.monotonic()
    service = RewardService(cfg)
    if service.cfg.auth_token is None and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a token: anyone who reaches the port can use the verifier "
                    "(see docs/security.md)", cfg.host)

    def begin_drain() -> None:
        service.draining = True  # /readyz 503, gRPC health NOT_SERVING, new verify requests refused

    grpc_server = start_grpc_server(service, cfg) if cfg.grpc_port else None
    if grpc_server is not None:
        log.info("gRPC RewardService listening on %s:%d", cfg.host, cfg.grpc_port)
    try:
        if cfg.http_port:
            log.info("HTTP API on http://%s:%d (docs at /docs); ready in %.1f s", cfg.host, cfg.http_port,
                     time.monotonic() - t0)
            import uvicorn

            server = _draining_server_class(begin_drain)(uvicorn.Config(
                build_app(service), host=cfg.host, port=cfg.http_port, log_level="warning",
                timeout_graceful_shutdown=int(cfg.shutdown_grace_s) or None))
            server.run()  # on SIGINT/SIGTERM: stops accepting, finishes in-flight requests, returns
        else:
            import signal

            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: (begin_drain(), stop.set()))
            stop.wait()
    finally:
        begin_drain()
        if grpc_server is not None:
            grpc_server.stop(cfg.shutdown_grace_s)
        service.pool.close()
        log.info("reward server stopped")
    return 0


if __name__ == "__main__":
    import sys

    from services.cli import main as cli_main

    sys.exit(cli_main(["serve-reward", *sys.argv[1:]]))
