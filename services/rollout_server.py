"""The rollout service: ``flywheel serve-rollout --model CHECKPOINT``.

Starts ``rollout.num_workers`` vLLM rollout workers on Ray behind a :class:`rollout.fleet.RolloutFleet`
and serves them over HTTP (``services.rollout_http``: OpenAI-compatible ``/v1/completions``,
``/v1/chat/completions``, ``/v1/models``; trainer-facing ``/v1/rollouts``; authenticated
``/v1/weights``; ``/healthz``; Prometheus ``/metrics``) and gRPC (``services.rollout_grpc``,
``protos/rollout.proto``). Both APIs share one :class:`RolloutService`, so limits, versions and
metrics are the same whichever way a request comes in.

Binds 127.0.0.1 by default. ``auth_token`` (or the env var named by ``auth_token_env``) guards the
state-changing endpoints (``/v1/weights``, gRPC ``LoadWeights``) and, with ``auth_all``, everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.config import RolloutConfig
from rollout.weight_update import model_specs

log = logging.getLogger("flywheel.rollout_server")


class RolloutServerConfig(BaseModel):
    """``flywheel serve-rollout`` settings."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str | None = None
    """Checkpoint to serve (overrides ``rollout.model``): ``flywheel serve-rollout --model runs/dpo/final``."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """The workers: how many, engine sizes, weight transport."""
    host: str = "127.0.0.1"
    """Interface to bind (both APIs). Use 0.0.0.0 only behind a network boundary you trust."""
    http_port: int = Field(8360, ge=0, le=65535)
    """HTTP (FastAPI) port; 0 disables the HTTP API."""
    grpc_port: int = Field(8361, ge=0, le=65535)
    """gRPC port; 0 disables the gRPC API."""
    auth_token: str | None = None
    """Bearer token for ``/v1/weights`` and gRPC ``LoadWeights`` (and all endpoints with ``auth_all``)."""
    auth_token_env: str = "FLYWHEEL_ROLLOUT_TOKEN"
    """Environment variable read for the token when ``auth_token`` is not set."""
    auth_all: bool = False
    """Require the bearer token on every endpoint, not only the state-changing ones."""
    max_prompt_tokens: int = Field(1024, ge=1, le=1_048_576)
    """Longest prompt accepted (HTTP 400 / gRPC INVALID_ARGUMENT beyond)."""
    max_tokens: int = Field(1024, ge=1, le=1_048_576)
    """Largest ``max_tokens`` a request may ask for."""
    max_n: int = Field(64, ge=1, le=4096)
    """Largest ``n`` (samples per prompt) a request may ask for."""
    max_logprobs: int = Field(5, ge=0, le=20)
    """Largest ``logprobs`` / ``top_logprobs`` a request may ask for."""
    max_prompts_per_request: int = Field(256, ge=1, le=100_000)
    """Most prompts in one ``/v1/completions`` or ``/v1/rollouts`` request."""
    weights_root: str | None = None
    """If set, ``/v1/weights`` only loads files inside this folder."""
    ray_address: str | None = None
    """Ray cluster to join (``auto`` for a running one); None starts a local Ray."""

    @model_validator(mode="after")
    def _apply_model(self) -> RolloutServerConfig:
        if self.model:
            self.rollout = self.rollout.model_copy(update={"model": self.model})
        return self

    def token(self) -> str | None:
        return self.auth_token or os.environ.get(self.auth_token_env) or None


class RequestError(ValueError):
    """A client error: the message is returned to the caller (HTTP 4xx / gRPC INVALID_ARGUMENT)."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def file_sha256(path: str | Path) -> str:
    """sha256 of a safetensors file, or of a folder's ``*.safetensors`` files concatenated in name order."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class RolloutService:
    """What both APIs call: validation against the limits, routing, weight updates, metrics."""

    def __init__(self, cfg: RolloutServerConfig, router, tokenizer) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.cfg = cfg
        self.router = router
        self.tokenizer = tokenizer
        self.model_name = cfg.rollout.model_name
        self.version = 0
        self.active = 0
        self._weights_lock = asyncio.Lock()
        self.started = time.time()
        self._tok_window: list[tuple[float, int]] = []
        r = self.registry = CollectorRegistry()
        self.m_tokens = Counter("flywheel_rollout_generated_tokens", "Completion tokens generated", registry=r)
        self.m_requests = Counter("flywheel_rollout_requests", "Requests by endpoint and status",
                                  ["endpoint", "status"], registry=r)
        self.m_queue = Gauge("flywheel_rollout_queue_depth", "Requests being served or waiting", registry=r)
        self.m_version = Gauge("flywheel_rollout_weight_version", "Policy version being served", registry=r)
        self.m_tps = Gauge("flywheel_rollout_tokens_per_second", "Completion tokens/s over the last 30 s",
                           registry=r)
        self.m_sync = Histogram("flywheel_rollout_weight_sync_seconds", "Weight update latency (whole update)",
                                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.m_stall = Gauge("flywheel_rollout_last_generation_stall_seconds",
                             "Time generation was paused by the last update (slowest worker)", registry=r)
        self.m_workers = Gauge("flywheel_rollout_workers_alive", "Live rollout workers", registry=r)
        self.m_workers.set(router.num_alive)
        self._model_specs = model_specs(cfg.rollout.model)

    # ------------------------------------------------------------------ accounting
    def count_tokens(self, n: int) -> None:
        now = time.time()
        self.m_tokens.inc(n)
        self._tok_window.append((now, n))
        while self._tok_window and self._tok_window[0][0] < now - 30:
            self._tok_window.pop(0)
        span = max(1e-6, min(30.0, now - self.started))
        self.m_tps.set(sum(k for _, k in self._tok_window) / span)

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        self.m_queue.set(self.active)
        self.m_version.set(self.version)
        self.m_workers.set(self.router.num_alive)
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ validation
    def check_model(self, model: str | None) -> None:
        if model and model != self.model_name:
            raise RequestError(f"unknown model {model!r}; this server serves {self.model_name!r}", 404,
                               "model_not_found")

    def check_sampling(self, n: int, max_tokens: int, logprobs: int | None = None) -> None:
        c = self.cfg
        if not 1 <= n <= c.max_n:
            raise RequestError(f"n = {n} is out of range: 1 <= n <= {c.max_n}")
        if not 1 <= max_tokens <= c.max_tokens:
            raise RequestError(f"max_tokens = {max_tokens} is out of range: 1 <= max_tokens <= {c.max_tokens}")
        if logprobs is not None and not 0 <= logprobs <= c.max_logprobs:
            raise RequestError(f"logprobs = {logprobs} is out of range: 0 <= logprobs <= {c.max_logprobs}")

    def prompt_ids(self, prompt: str | list[int], max_tokens: int) -> list[int]:
        """Tokenise (if text) and check the length limits."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        else:
            ids = [int(t) for t in prompt]
            vocab = len(self.tokenizer)
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise RequestError(f"token id {bad[0]} is out of the vocabulary (0..{vocab - 1})")
        if not ids:
            raise RequestError("empty prompt")
        if len(ids) > self.cfg.max_prompt_tokens:
            raise RequestError(f"prompt has {len(ids)} tokens; the limit is max_prompt_tokens = "
                               f"{self.cfg.max_prompt_tokens}")
        if len(ids) + max_tokens > self.cfg.rollout.max_model_len:
            raise RequestError(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                               f"context of {self.cfg.rollout.max_model_len} tokens")
        return ids

    def chat_prompt_ids(self, messages: list[dict], max_tokens: int) -> list[int]:
        if not messages:
            raise RequestError("messages must not be empty")
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # noqa: BLE001 - a template error is the caller's malformed messages
            raise RequestError(f"cannot apply the chat template to these messages: {e}") from e
        return self.prompt_ids(text, max_tokens)

    # ------------------------------------------------------------------ generation
    async def stream(self, prompt_ids: list[int], params: dict):
        """Deltas of one request from the least-loaded worker (dicts, see RolloutEngine.stream_completion)."""
        w = self.router.pick()
        self.router.load[w] += 1
        self.active += 1
        try:
            gen = self.router.workers[w].stream_completion.options(num_returns="streaming").remote(
                {"prompt_token_ids": prompt_ids}, params)
            async for ref in gen:
                d = await ref
                self.count_tokens(len(d["token_ids"]))
                yield d
        except Exception as e:
            from ray.exceptions import RayActorError

            if isinstance(e, RayActorError):
                self.router.mark_dead(w, e)
            raise
        finally:
            self.router.load[w] -= 1
            self.active -= 1

    async def rollouts(self, prompts: list[dict], sampling: dict) -> list[dict]:
        self.active += len(prompts)
        try:
            groups = await self.router.agenerate(prompts, sampling)
        finally:
            self.active -= len(prompts)
        self.count_tokens(sum(len(s["completion_token_ids"]) for g in groups for s in g["samples"]))
        return groups

    # ------------------------------------------------------------------ weights
    async def load_weights(self, version: int, path: str, sha256: str) -> dict:
        p = Path(path)
        if self.cfg.weights_root is not None:
            root = Path(self.cfg.weights_root).resolve()
            if not p.resolve().is_relative_to(root):
                raise RequestError(f"path {path!r} is outside weights_root {str(root)!r}", 403, "forbidden")
        if not p.exists():
            raise RequestError(f"weights path {path!r} does not exist on the server", 400)
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
        if not files or any(f.suffix != ".safetensors" for f in files):
            raise RequestError(f"weights path {path!r} is not a safetensors file or a folder of them")
        from rollout.weight_update import StaleWeightUpdate, WeightUpdate, WeightUpdateError, check_version

        async with self._weights_lock:
            try:
                check_version(version, self.version)
            except StaleWeightUpdate as e:
                raise RequestError(str(e), 409, "stale_version") from None
            except WeightUpdateError as e:
                raise RequestError(str(e), 400) from None
            digest = await asyncio.to_thread(file_sha256, p)
            if not sha256 or digest != sha256.lower():
                raise RequestError(f"sha256 mismatch for {path!r}: got {sha256!r}, file has {digest}", 400,
                                   "checksum_mismatch")
            self.check_weight_files(files)
            t0 = time.perf_counter()
            try:
                recs = await self.router.apublish(WeightUpdate(version, files=[str(f) for f in files]))
            except WeightUpdateError as e:
                raise RequestError(str(e), 400, "bad_weights") from e
            except Exception as e:  # noqa: BLE001 - Ray wraps the worker's WeightUpdateError
                cause = getattr(e, "cause", None)
                if isinstance(cause, WeightUpdateError) or "WeightUpdateError" in str(e):
                    raise RequestError(str(cause or e).splitlines()[-1], 400, "bad_weights") from e
                raise
            self.version = version
            sync_s = time.perf_counter() - t0
            stall_s = max((r["stall_s"] for r in recs), default=0.0)
            self.m_sync.observe(sync_s)
            self.m_stall.set(stall_s)
            return {"version": version, "sync_s": sync_s, "stall_s": stall_s, "workers": len(recs)}

    def check_weight_files(self, files: list[Path]) -> None:
        """Refuse (400, naming tensor and file) an update that is unreadable, lacks a tensor of the served
        model, has one it does not know, or has one of another shape; the workers never see it, so the
        weights being served stay as they were. Without a local checkpoint to compare with (a hub id),
        only readability and dtypes are checked here and the engines check names and shapes."""
        from rollout.weight_update import WeightUpdateError, read_specs, validate_specs

        specs: dict = {}
        try:
            for f in files:
                got = read_specs(f)  # its error names the file
                try:
                    validate_specs(got, self._model_specs)
                except WeightUpdateError as e:
                    raise WeightUpdateError(f"{f.name}: {e}") from None
                specs.update(got)
            try:
                validate_specs(specs, self._model_specs, complete=True)
            except WeightUpdateError as e:
                raise WeightUpdateError(f"{', '.join(f.name for f in files)}: {e}") from None
        except WeightUpdateError as e:
            raise RequestError(str(e), 400, "bad_weights") from None

    def status(self) -> dict[str, Any]:
        return {"model": self.model_name, "weight_version": self.version, "workers": self.router.num_alive,
                "queue_depth": self.active, "in_flight": sum(self.router.load)}


# ---------------------------------------------------------------------- process entry
def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


async def serve(service: RolloutService, cfg: RolloutServerConfig, started: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run the HTTP and gRPC servers until ``stop`` is set (or the task is cancelled)."""
    import uvicorn

    from services.rollout_grpc import start_grpc
    from services.rollout_http import build_app

    stop = stop or asyncio.Event()
    grpc_server = await start_grpc(service, cfg.host, cfg.grpc_port) if cfg.grpc_port else None
    http = None
    if cfg.http_port:
        http = uvicorn.Server(uvicorn.Config(build_app(service), host=cfg.host, port=cfg.http_port,
                                             log_level="warning", lifespan="off"))
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
        if http is not None:
            http.should_exit = True
            await http_task
        if grpc_server is not None:
            await grpc_server.stop(grace=2.0)


def main(cfg: RolloutServerConfig) -> int:
    import signal

    import ray

    from rollout.fleet import RolloutFleet
    from rollout.worker import create_workers

    if not Path(cfg.rollout.model).exists() and "/" not in cfg.rollout.model:
        log.error("model %r not found (pass --model CHECKPOINT_DIR)", cfg.rollout.model)
        return 2
    if Path(cfg.rollout.model).is_dir():
        from pretraining.checkpoint import CheckpointError, check_weights

        try:  # before Ray and vLLM start: their failure would surface in a worker's log, not here
            check_weights(cfg.rollout.model)
        except (CheckpointError, FileNotFoundError) as e:
            log.error("cannot serve %s: %s", cfg.rollout.model, e)
            return 2
    ray.init(address=cfg.ray_address, include_dashboard=False, ignore_reinit_error=True)
    log.info("starting %d rollout worker(s) for %s", cfg.rollout.num_workers, cfg.rollout.model)
    workers = create_workers(cfg.rollout)
    router = RolloutFleet(workers, cfg.rollout.max_in_flight)
    service = RolloutService(cfg, router, load_tokenizer(cfg.rollout.model))

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
    return 0
