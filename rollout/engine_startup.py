"""What it takes for a vLLM engine to start, or to say in one line why it did not.

Used by :meth:`rollout.engine.RolloutEngine.start` (the rollout service, the GRPO job, the
benchmarks) and by ``pretraining.evaluate.make_llm`` (``flywheel eval``); the CLI prints an
:class:`EngineStartError` as one line and exits 2:

- :func:`precheck`: refuse before vLLM starts what would fail inside it with a buried message (a
  ``max_model_len`` above the checkpoint's limit, a KV cache larger than the free memory).
- :func:`start_error`: any start-up failure as :class:`EngineStartError`, whose message is one line
  with the real cause. vLLM reports a bad config as a pydantic ``ValidationError`` (which Ray cannot
  pickle back to the driver: ``TypeError: cannot pickle 'ArgsKwargs'``) and an engine-core failure as
  "see root cause above", the cause being in the engine-core process's stderr; both are turned into
  the cause itself.
- :func:`smoke_test`: one generation from a one-token prompt right after start-up, so an engine that
  cannot run on this machine fails here, with a clear message, not on a client's first request.
- :func:`vllm_plugin`: registered as a ``vllm.general_plugins`` entry point (``pyproject.toml``), so
  vLLM runs it in every one of its processes. It asks Linux for the AMX tile state
  (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, ``torch.cpu._init_amx()``). vLLM's CPU kernels for bfloat16
  (the ``amx`` attention ISA, the SGL GEMM for small weights) execute AMX instructions but never ask
  for that permission; oneDNN does, on its first bf16 GEMM, which vLLM's warm-up usually triggers. With
  ``enforce_eager`` and an explicit KV cache the warm-up is skipped, so a first request with a
  one-token prompt reached an AMX kernel before anything had asked: SIGILL, the worker process dead.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """A vLLM engine that did not start (or cannot generate); the message is one line with the cause."""


def precheck(cfg, max_model_len: int) -> None:
    """Refuse, naming the numbers, what vLLM would refuse (or die of) in a way the user never sees."""
    from rollout.config import context_overflow

    why = context_overflow(cfg.model, max_model_len, f"rollout.max_model_len = {max_model_len}")
    if why:
        raise EngineStartError(why)
    if cfg.num_gpus_per_worker <= 0:
        try:
            import psutil

            free = psutil.virtual_memory().available
        except Exception:  # noqa: BLE001 - no psutil / no /proc: vLLM checks it again anyway
            return
        if cfg.kv_cache_gib * 2**30 > free:
            raise EngineStartError(f"rollout.kv_cache_gib = {cfg.kv_cache_gib} GiB of KV cache does not fit in the "
                                   f"{free / 2**30:.1f} GiB of free memory; lower rollout.kv_cache_gib")


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_EXC_LINE = re.compile(r"(?:^|\] )((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Exit)\b: .+)$")


def _last_logged_error(max_bytes: int = 256 * 1024) -> str | None:
    """The last ``SomeError: message`` line written to this process's stderr, when stderr is a file (a Ray
    worker's log): where vLLM's engine-core process, which shares it, printed its traceback."""
    try:
        target = os.readlink("/proc/self/fd/2")
        if not os.path.isfile(target):
            return None
        with open(target, "rb") as f:
            f.seek(max(0, os.path.getsize(target) - max_bytes))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        m = _EXC_LINE.search(line.strip())
        if m and "Engine core initialization failed" not in m.group(1):
            return m.group(1)
    return None


def start_error(e: BaseException, model: str) -> EngineStartError:
    """``e`` (raised while building the engine) as an :class:`EngineStartError` with its real cause."""
    if isinstance(e, EngineStartError):
        return e
    errors = getattr(e, "errors", None)
    if callable(errors):  # pydantic ValidationError from vLLM's config classes
        try:
            parts = []
            for err in errors():
                loc = ".".join(str(x) for x in err.get("loc", ()))
                msg = str(err.get("msg", "")).removeprefix("Value error, ")
                parts.append(f"{loc}: {msg}" if loc else msg)
            return EngineStartError(_one_line(f"vLLM refused the engine config for {model}: " + "; ".join(parts)))
        except Exception:  # noqa: BLE001 - fall through to the generic line
            pass
    cause = f"{type(e).__name__}: {e}"
    if "see root cause above" in str(e).lower() or "engine core" in str(e).lower():
        logged = _last_logged_error()
        if logged:
            cause = logged
    return EngineStartError(_one_line(f"vLLM engine for {model} did not start: {cause}"))


async def smoke_test(llm, dtype: str) -> None:
    """Generate one token from a one-token prompt; raise :class:`EngineStartError` if the engine cannot."""
    from vllm import SamplingParams

    try:
        async for _ in llm.generate({"prompt_token_ids": [0]}, SamplingParams(max_tokens=1, temperature=0.0),
                                    request_id="flywheel-startup-check"):
            pass
    except Exception as e:  # noqa: BLE001 - whatever it is, the engine cannot serve
        raise EngineStartError(_one_line(
            f"the engine started but died on its first test generation (dtype {dtype}): {type(e).__name__}: {e}; "
            "if this CPU cannot run that dtype, set rollout.dtype float32")) from None


def engine_death(llm) -> str | None:
    """Why ``llm`` (an ``AsyncLLM``) can no longer generate, or None while it can."""
    if llm is None or not getattr(llm, "errored", False):
        return None
    err = getattr(llm, "dead_error", None)
    return _one_line(f"vLLM engine died: {type(err).__name__ if err else 'EngineDeadError'}"
                     f"{': ' + str(err).splitlines()[0] if err and str(err) else ''}")


def vllm_plugin() -> None:
    """vLLM general plugin (runs in every vLLM process): request the AMX tile state where the CPU has it."""
    try:
        import torch

        if torch.cpu._is_amx_tile_supported():
            torch.cpu._init_amx()
    except Exception:  # noqa: BLE001 - never break vLLM start-up for this
        log.debug("AMX tile permission request failed", exc_info=True)
