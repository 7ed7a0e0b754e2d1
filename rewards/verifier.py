"""``verify`` / ``verify_batch``: extraction, the in-process fast path, then the worker pool.

In the calling process (no sympy, no subprocess): length caps, answer extraction (in the mode of
``VerifyConfig.extraction``), the gold's own answer (a worked solution's last box, GSM8K ``####``),
normalised string equality, exact rational arithmetic when both sides are plain numbers,
multiple-choice letters, case-insensitive text answers.
Everything else goes to the worker pool (``rewards.worker_pool``) under a hard time limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from fractions import Fraction

from rewards.config import VerifyConfig
from rewards.extract import find_answer, gold_answer
from rewards.normalize import choice_letter, decimal_places, normalize, parse_rational, text_answer
from rewards.worker_pool import shared_pool

VERIFIER_VERSION = "flywheel-verifier-2"
"""Bumped whenever a verdict could change; part of the service's cache key."""

STATUSES = ("correct", "wrong", "no_answer", "unparsable_gold", "timeout", "error")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    status: str
    """``correct`` | ``wrong`` | ``no_answer`` | ``unparsable_gold`` | ``timeout`` | ``error``."""
    extracted: str | None
    """The answer found in the completion."""
    reason: str
    source: str = "none"
    """Where the answer was found: ``boxed`` | ``final_answer`` | ``gsm8k`` | ``answer_line`` | ``math`` |
    ``last_number`` | ``answer`` | ``none``."""
    latency_ms: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _fast_path(gold: str, pred: str, cfg: VerifyConfig) -> tuple[bool, str] | None:
    """A verdict without sympy when both sides are plain numbers, letters or text; None = not decided."""
    g_norm, p_norm = normalize(gold), normalize(pred)
    if g_norm == p_norm:
        return True, "same normalised string"
    if (letter := choice_letter(g_norm)) is not None:
        p_letter = choice_letter(p_norm, any_case=True)
        return letter == p_letter, "choice letters" if p_letter else "gold is a choice letter, answer is not"
    if (text := text_answer(g_norm)) is not None and text == text_answer(p_norm):
        return True, "same text answer"
    g = parse_rational(gold, cfg.max_exponent)
    if g is None:
        return None
    p = parse_rational(pred, cfg.max_exponent)
    if p is None:
        return None
    (gv, g_pct), (pv, p_pct) = g, p
    candidates = {pv}
    if p_pct:
        candidates.add(pv / 100)
    if g_pct:
        candidates.add(pv * 100)
    if gv in candidates:
        return True, "equal rationals"
    g_places, p_places = decimal_places(gold), decimal_places(pred)
    if (g_places is None) != (p_places is None):  # one side a decimal, the other an exact fraction
        approx, exact, places = (pv, gv, p_places) if p_places is not None else (gv, pv, g_places)
        if not _terminating(exact):
            if abs(exact - approx) <= max(Fraction(repr(cfg.rel_tol)) * abs(exact), Fraction(repr(cfg.abs_tol))):
                return True, f"decimal within rel_tol={cfg.rel_tol:g} of a non-terminating rational"
            if cfg.accept_rounded_decimals and places >= 2 and abs(exact - approx) <= Fraction(1, 2) / 10 ** places:
                return True, "rounded decimal of a non-terminating rational"
    return False, "different rationals"


def _terminating(x: Fraction) -> bool:
    q = x.denominator
    for f in (2, 5):
        while q % f == 0:
            q //= f
    return q == 1


def _item(item: object) -> tuple[str, str]:
    if isinstance(item, Mapping):
        return item["completion"], item["gold"]
    completion, gold = item  # (completion, gold)
    return completion, gold


def _in_process(completion: object, gold: object, cfg: VerifyConfig) -> Verdict | tuple[str, str, str]:
    """The verdict when caps, extraction or the fast path decide it, else ``(gold, answer, source)`` for the pool."""
    if not isinstance(completion, str) or not isinstance(gold, str):
        return Verdict(False, "error", None, "completion and gold must be strings")
    if len(completion) > cfg.max_completion_chars:
        return Verdict(False, "error", None, f"completion of {len(completion)} chars exceeds max_completion_chars="
                                             f"{cfg.max_completion_chars}")
    if len(gold) <= cfg.max_completion_chars:
        gold = gold_answer(gold)
    if not gold or len(gold) > cfg.max_answer_chars:
        return Verdict(False, "unparsable_gold", None, "gold answer is empty" if not gold else
                       f"gold answer longer than max_answer_chars={cfg.max_answer_chars}")
    found = find_answer(completion, cfg.last_number_fallback, cfg.extraction)
    if found.answer is None:
        return Verdict(False, "no_answer", None, "no final answer found", found.source)
    if len(found.answer) > cfg.max_answer_chars:
        return Verdict(False, "wrong", found.answer[:200], "answer longer than max_answer_chars", found.source)
    fast = _fast_path(gold, found.answer, cfg)
    if fast is not None:
        equal, reason = fast
        return Verdict(equal, "correct" if equal else "wrong", found.answer, reason, found.source)
    return gold, found.answer, found.source


def verify_batch(items: Iterable[object], config: VerifyConfig | None = None) -> list[Verdict]:
    """Verify ``(completion, gold)`` pairs (tuples or dicts); parallel across worker processes, in order."""
    cfg = config or VerifyConfig()
    t0 = time.perf_counter()
    verdicts: list[Verdict | None] = []
    slow: list[tuple[int, str, str, str]] = []
    for completion, gold in map(_item, items):
        t_item = time.perf_counter()
        decided = _in_process(completion, gold, cfg)
        if isinstance(decided, Verdict):
            verdicts.append(replace(decided, latency_ms=(time.perf_counter() - t_item) * 1e3))
        else:
            slow.append((len(verdicts), *decided))
            verdicts.append(None)
    if slow:
        key = _config_key(cfg)
        tasks = [{"gold": gold, "pred": pred, "config": cfg.model_dump(), "config_key": key}
                 for _, gold, pred, _ in slow]
        pool = shared_pool(cfg.num_workers)
        results = pool.run(tasks, cfg.timeout_s)
        elapsed = (time.perf_counter() - t0) * 1e3
        for (i, _, pred, source), r in zip(slow, results):
            verdicts[i] = Verdict(bool(r["equal"]), r["status"], pred, r["reason"], source, elapsed)
    return verdicts  # type: ignore[return-value]


def verify(completion: str, gold: str, config: VerifyConfig | None = None) -> Verdict:
    """Is the final answer in ``completion`` equivalent to ``gold``?"""
    return verify_batch([(completion, gold)], config)[0]


_KEYS: dict[int, str] = {}


def _config_key(cfg: VerifyConfig) -> str:
    h = hash(cfg)
    if h not in _KEYS:
        _KEYS[h] = json.dumps(cfg.model_dump(), sort_keys=True)
    return _KEYS[h]
