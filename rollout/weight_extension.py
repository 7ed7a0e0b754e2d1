"""The vLLM worker extension that loads new weights in place (runs inside vLLM's worker process).

vLLM mixes this class into its worker (``worker_extension_cls``); the rollout engine reaches it with
``AsyncLLM.collective_rpc("flywheel_...")``. Every such call runs on the engine's own thread between
two model steps, so a call that takes 30 ms stops generation for 30 ms whether or not the engine is
paused. Hence two paths:

- **prepare, then commit** (CPU, the default): ``flywheel_prepare`` starts a background thread that
  reads the new tensors and builds everything the model needs from them (name mapping, dtype, new
  packed GEMM handles; :mod:`rollout.inplace_update`) while the engine keeps generating;
  ``flywheel_prepared`` polls it; ``flywheel_commit``, sent while the engine is paused, only copies
  into parameters and swaps handles (well under a millisecond on the tiny model).
- **reload** (fallback, e.g. GPU or an update the fast path does not cover):
  ``flywheel_reload_files`` runs ``model_runner.reload_weights(weights_iterator=...)``, which
  re-applies vLLM's own weight processing while paused (loading into ``model.load_weights``
  directly breaks after vLLM's CPU repacking).

A step clock (``flywheel_install_step_clock``) timestamps every model step, so the engine can
report how long the model actually sat idle around each update (``flywheel_commit_gaps``).

Tensors cannot travel as ``collective_rpc`` arguments through vLLM's engine-core IPC ("cannot
pickle memoryview"), so updates arrive as safetensors files: in ``/dev/shm`` (shared memory, no
disk) for the CPU object-store transport, or on shared storage for the service's ``/v1/weights``.
Method names carry a ``flywheel_`` prefix so they never clash with vLLM's weight-transfer API.

Kept free of heavy module-level imports: vLLM imports it by name in every worker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


def _read_files(paths: list[str]):
    from safetensors import safe_open

    for path in paths:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


class _StepClock:
    """Timestamps of model steps (``execute_model`` entry, last ``execute_model``/``sample_tokens``
    exit) and, per commit, the end of the step before it and the start of the step after it."""

    def __init__(self, model_runner) -> None:
        self.last_end = 0.0
        self.gaps: deque[float] = deque(maxlen=512)  # normal end -> start gaps between steps
        self.commits: deque[dict] = deque(maxlen=1024)
        self._open: list[dict] = []
        execute, sample = model_runner.execute_model, model_runner.sample_tokens

        def execute_model(*args, **kwargs):
            now = time.perf_counter()
            if self._open:
                for c in self._open:
                    c["next_step_start"] = now
                self._open = []
            elif self.last_end:
                self.gaps.append(now - self.last_end)
            try:
                return execute(*args, **kwargs)
            finally:
                self.last_end = time.perf_counter()

        def sample_tokens(*args, **kwargs):
            try:
                return sample(*args, **kwargs)
            finally:
                self.last_end = time.perf_counter()

        model_runner.execute_model = execute_model
        model_runner.sample_tokens = sample_tokens

    def record(self, token: str, t0: float, t1: float, **extra: float) -> None:
        c = {"token": token, "prev_step_end": self.last_end, "commit_start": t0, "commit_end": t1,
             "next_step_start": None, **extra}
        self.commits.append(c)
        self._open.append(c)


class WeightReloadExtension:
    """Worker-side entry points for in-place weight updates."""

    # ------------------------------------------------------------------ fallback: vLLM reload
    def flywheel_reload_files(self, paths: list[str], token: str = "reload") -> int:
        """Load safetensors files in one ``reload_weights`` (engine paused); returns tensor count."""
        count = [0]

        def tensors():
            for item in _read_files(paths):
                count[0] += 1
                yield item

        t0 = time.perf_counter()
        self.model_runner.reload_weights(weights_iterator=tensors())
        self._flywheel_record(token, t0)
        return count[0]

    # ------------------------------------------------------------------ prepare, then commit
    def flywheel_prepare(self, paths: list[str], token: str) -> bool:
        """Start preparing the update in ``paths`` in the background; False if unsupported here
        (then use :meth:`flywheel_reload_files`). Returns at once."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return False
        self._flywheel_start(token, lambda: _read_files(paths), prepare=True)
        return True

    def _flywheel_start(self, token: str, source, prepare: bool) -> None:
        """Run ``source()`` (an iterator of ``(name, tensor)``) in a background thread: into a
        :class:`rollout.inplace_update.PreparedUpdate` (``prepare``) or staged as a list for
        :meth:`flywheel_reload_staged`; :meth:`flywheel_prepared` reports the outcome."""
        job: dict[str, Any] = {"done": threading.Event(), "result": None, "error": None, "staged": None}
        self._flywheel_jobs()[token] = job
        cfg = self.model_runner.vllm_config

        def work() -> None:
            from rollout.inplace_update import prepare_update

            job["start"] = time.perf_counter()
            try:
                items = source()
                if isinstance(items, list) or not prepare:  # kept for a reload should preparing fail
                    job["staged"] = items = list(items)
                job["received"] = time.perf_counter()  # a list: read (or received) whole by now
                if prepare:
                    job["result"] = prepare_update(self.model_runner.get_model(), items,
                                                   tp_size=cfg.parallel_config.tensor_parallel_size,
                                                   lora=cfg.lora_config is not None)
            except Exception as e:  # noqa: BLE001 - reported to the caller by flywheel_prepared
                job["error"] = f"{type(e).__name__}: {e}"
            finally:
                job["end"] = time.perf_counter()
                job["done"].set()

        threading.Thread(target=work, name=f"flywheel-prepare-{token}", daemon=True).start()

    # ------------------------------------------------------------------ collective transport
    def flywheel_join(self, handle: dict) -> bool:
        """Start joining weight group ``handle["group"]`` (:func:`rollout.weight_sync.join_group`) in the
        background as rank ``handle["rank"]`` (+ this worker's rank within its engine), announcing the
        engine's dtype; poll :meth:`flywheel_joined`. Returns at once."""
        state: dict[str, Any] = {"done": threading.Event(), "error": None}
        self._flywheel_join_state = (handle["group"], state)
        rank = int(handle["rank"]) + int(getattr(self, "rank", 0) or 0)
        dtype = str(self.model_runner.vllm_config.model_config.dtype).removeprefix("torch.")
        backend = handle.get("backend", "gloo")
        device = getattr(self, "device", None) if backend == "nccl" else None  # vLLM's worker: its own GPU

        def work() -> None:
            from rollout.weight_sync import group_device, join_group

            try:
                device_ = group_device(backend, device)
                self._flywheel_group = (handle["group"], join_group(handle, rank, dtype), backend, device_)
            except Exception as e:  # noqa: BLE001 - reported by flywheel_joined
                state["error"] = f"{type(e).__name__}: {e}"
            finally:
                state["done"].set()

        threading.Thread(target=work, name=f"flywheel-join-{handle['group']}", daemon=True).start()
        return True

    def flywheel_joined(self, group: str) -> str | None:
        """None while joining weight group ``group``; then "ok" or the error."""
        current = getattr(self, "_flywheel_join_state", None)
        if current is None or current[0] != group:
            return f"weight group {group} was never joined here"
        if not current[1]["done"].is_set():
            return None
        return current[1]["error"] or "ok"

    def flywheel_receive(self, handle: dict, token: str, mode: str = "prepare") -> bool:
        """Start receiving one broadcast (``handle`` from ``WeightBroadcaster.plan``) in the background:
        ``prepare`` (CPU: then :meth:`flywheel_commit`), ``stage`` (then :meth:`flywheel_reload_staged`)
        or ``discard`` (take part in the broadcast, keep nothing: a refused update must not stall the
        others). False when this worker is not in the handle's group."""
        group = getattr(self, "_flywheel_group", None)
        if group is None or group[0] != handle["group"]:
            return False
        from rollout.weight_sync import group_device, receive_buckets

        _, pg, backend, device = group

        def received():
            return receive_buckets(pg, handle, group_device(backend, device))  # in the receiving thread

        if mode == "discard":
            threading.Thread(target=lambda: [None for _ in received()], daemon=True,
                             name=f"flywheel-discard-{token}").start()
            return True
        # received whole before preparing: a broadcast must be read to its end whatever the model says
        self._flywheel_start(token, lambda: list(received()), prepare=mode == "prepare")
        return True

    def flywheel_reload_staged(self, token: str) -> int:
        """Load a staged (received) update in one ``reload_weights`` (engine paused); returns tensor count."""
        job = self._flywheel_jobs().pop(token)
        job["done"].wait()
        if job["staged"] is None:
            raise RuntimeError(f"weight update {token} failed to arrive: {job['error']}")
        t0 = time.perf_counter()
        self.model_runner.reload_weights(weights_iterator=iter(job["staged"]))
        self._flywheel_record(token, t0)
        return len(job["staged"])

    def flywheel_prepared(self, token: str) -> str | None:
        """None while preparing; then "ok", "staged (why)" for a received update to reload while paused,
        or the error (an unsupported update: fall back to reload)."""
        job = self._flywheel_jobs()[token]
        if not job["done"].is_set():
            return None
        if job["error"] is not None:
            if job["staged"] is None:
                self._flywheel_jobs().pop(token, None)
                return job["error"]
            return f"staged ({job['error']})"  # received, not prepared: flywheel_reload_staged can load it
        return "ok"

    def flywheel_commit(self, token: str) -> int:
        """Install a prepared update (send it while the engine is paused); returns tensor count."""
        job = self._flywheel_jobs().pop(token)
        job["done"].wait()  # normally already done: the engine polls flywheel_prepared first
        if job["error"] is not None:
            raise RuntimeError(f"weight update {token} failed to prepare: {job['error']}")
        t0 = time.perf_counter()
        job["result"].commit()
        self._flywheel_record(token, t0, prepare_start=job["start"], prepare_end=job["end"],
                              received=job.get("received", job["start"]))
        return job["result"].tensors

    def flywheel_discard(self, token: str) -> None:
        """Drop a prepared update that will not be committed."""
        self._flywheel_jobs().pop(token, None)

    # ------------------------------------------------------------------ step clock
    def flywheel_install_step_clock(self) -> bool:
        """Timestamp model steps from now on (idempotent)."""
        if getattr(self, "_flywheel_clock", None) is None:
            self._flywheel_clock = _StepClock(self.model_runner)
        return True

    def flywheel_commit_gaps(self, tokens: list[str]) -> dict:
        """For the updates ``tokens``: end of the last step before it, its own start/end, start of
        the next step (None until one ran); plus the last 64 normal gaps between steps (seconds)."""
        clock = getattr(self, "_flywheel_clock", None)
        if clock is None:
            return {"commits": [], "gaps": []}
        wanted = set(tokens)
        return {"commits": [c for c in clock.commits if c["token"] in wanted], "gaps": list(clock.gaps)[-64:]}

    def _flywheel_record(self, token: str, t0: float, **extra: float) -> None:
        clock = getattr(self, "_flywheel_clock", None)
        if clock is not None:
            clock.record(token, t0, time.perf_counter(), **extra)

    def _flywheel_jobs(self) -> dict:
        if getattr(self, "_flywheel_prepare_jobs", None) is None:
            self._flywheel_prepare_jobs = {}
        return self._flywheel_prepare_jobs

    def flywheel_parameter_names(self) -> list[str]:
        """The checkpoint-format parameter names the model accepts (for validating an update)."""
        return [n for n, _ in self.model_runner.get_model().named_parameters()]
