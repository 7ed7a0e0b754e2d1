"""Reward shaping: correctness + optional format reward + DAPO overlong soft penalty.

    total = correctness + format_weight * format + overlong_weight * overlong

* correctness: ``correct_reward`` if the verdict is correct, else ``wrong_reward`` (DAPO: +1 / -1).
* format: 1 when the answer is marked (``\\boxed{}``, "final answer is", ``####``, ``Answer:``), else 0.
* overlong (DAPO, Yu et al. 2025, eq. 13): with L_max = ``max_response_tokens`` and L_cache =
  ``overlong_buffer_tokens``: 0 for |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache inside
  the buffer; -1 beyond L_max. Off when L_max is None or the length is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from rewards.config import RewardConfig
from rewards.verifier import Verdict, verify_batch

_MARKED = ("boxed", "final_answer", "gsm8k", "answer_line")


@dataclass(frozen=True)
class Reward:
    total: float
    correctness: float
    format: float
    overlong: float
    verdict: Verdict

    def to_dict(self) -> dict:
        return asdict(self)


def overlong_penalty(response_tokens: int | None, max_tokens: int | None, buffer_tokens: int) -> float:
    """DAPO's soft overlong punishment in [-1, 0]."""
    if max_tokens is None or response_tokens is None:
        return 0.0
    expected = max_tokens - buffer_tokens
    if response_tokens <= expected:
        return 0.0
    if response_tokens <= max_tokens:
        return (expected - response_tokens) / buffer_tokens
    return -1.0


def shape(verdict: Verdict, response_tokens: int | None, cfg: RewardConfig) -> Reward:
    correctness = cfg.correct_reward if verdict.correct else cfg.wrong_reward
    fmt = 1.0 if verdict.source in _MARKED else 0.0
    over = overlong_penalty(response_tokens, cfg.max_response_tokens, cfg.overlong_buffer_tokens)
    total = correctness + cfg.format_weight * fmt + cfg.overlong_weight * over
    return Reward(total, correctness, fmt, over, verdict)


def score_batch(items: Iterable[Mapping], config: RewardConfig | None = None) -> list[Reward]:
    """Rewards for dicts with ``completion``, ``gold`` and optional ``response_tokens``, in order."""
    cfg = config or RewardConfig()
    items = list(items)
    verdicts = verify_batch([(it["completion"], it["gold"]) for it in items], cfg.verify)
    return [shape(v, it.get("response_tokens"), cfg) for v, it in zip(verdicts, items)]


def score(completion: str, gold: str, *, response_tokens: int | None = None,
          config: RewardConfig | None = None) -> Reward:
    """The shaped reward of one completion."""
    return score_batch([{"completion": completion, "gold": gold, "response_tokens": response_tokens}], config)[0]
