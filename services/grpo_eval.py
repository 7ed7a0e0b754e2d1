"""Held-out evaluation inside the GRPO job: the current weights, on the rollout workers already running.

One pass per mode: ``avg`` (``k`` samples per problem at ``eval.temperature`` / ``eval.top_p``: avg@k and
pass@k) and, when ``eval.greedy``, ``greedy`` (one sample at temperature 0). Problems are split across the
workers that are up; completions are scored by the job's scoring sink, the same verifier the training reward
uses. ``flywheel eval`` (``pretraining.evaluate``) measures an exported checkpoint the same way, with the
same settings (``pretraining.config.HeldoutConfig``), on a fresh engine.
"""

from __future__ import annotations

import time
from typing import Any

from services.grpo_report import evaluation_metrics


def evaluate_heldout(fleet: Any, sink: Any, heldout: list[dict[str, Any]], ev: Any, max_tokens: int) -> dict[str, Any]:
    """Metrics of the current weights on ``heldout`` prompts (``ev`` is the job's ``EvalSettings``)."""
    import ray

    from rollout.config import SamplingConfig

    t0 = time.perf_counter()
    # no per-request seed: vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset") when a
    # seeded request is chunk-prefilled, which a 200-prompt evaluation batch triggers
    modes = [("avg", SamplingConfig(n=ev.k, temperature=ev.temperature, top_p=ev.top_p, max_tokens=max_tokens))]
    if ev.greedy:
        modes.append(("greedy", SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens)))
    result: dict[str, Any] = {}
    for mode, sampling in modes:
        n = len(fleet.wait_for_up())
        shards = [sh for sh in (heldout[i::n] for i in range(n)) if sh]
        groups = sum(fleet.map("generate", shards, sampling.model_dump()), [])
        scored = ray.get(sink.score.remote(groups))
        result.update(evaluation_metrics(scored, mode, ev.k))
    result["eval_s"] = time.perf_counter() - t0
    return result
