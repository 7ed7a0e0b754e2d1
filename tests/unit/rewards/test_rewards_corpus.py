"""The labelled corpus (``corpus/*.jsonl``) in every extraction mode: ``marked`` and ``answer`` never judge
a wrong answer correct, ``lenient`` never does either and agrees with the labels on nearly every case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards import VerifyConfig, verify_batch

CORPUS = Path(__file__).resolve().parent / "corpus"
DATASETS = {"gsm8k", "math", "aime", "olympiad", "multiple_choice", "chatty", "adversarial", "golds", "forms", "heldout"}


def load_corpus() -> list[dict]:
    return [json.loads(line) for path in sorted(CORPUS.glob("*.jsonl")) for line in path.read_text().splitlines()]


CASES = load_corpus()


def test_corpus_is_big_labelled_and_covers_the_formats():
    assert len(CASES) >= 600
    assert {c["dataset"] for c in CASES} == DATASETS
    assert len({c["id"] for c in CASES}) == len(CASES)
    for c in CASES:
        assert isinstance(c["expected"], bool) and c["reason"].strip()
        assert isinstance(c["completion"], str) and isinstance(c["gold"], str)
    assert sum(not c["expected"] for c in CASES) >= len(CASES) / 3


@pytest.fixture(scope="module")
def verdicts() -> dict[str, list]:
    out = {}
    for mode in ("marked", "lenient", "answer"):
        cfg = VerifyConfig(extraction=mode, timeout_s=20.0)  # generous: a loaded machine must not turn verdicts into timeouts
        items = [((c["answer"] or "") if mode == "answer" else c["completion"], c["gold"]) for c in CASES]
        out[mode] = verify_batch(items, cfg)
    return out


def _misjudged(verdicts: list, expected_value: bool) -> list[tuple]:
    return [(c["id"], c["gold"][:50], v.extracted, v.status, v.reason, c["reason"])
            for c, v in zip(CASES, verdicts) if v.correct != c["expected"] and c["expected"] == expected_value]


@pytest.mark.parametrize("mode", ["marked", "lenient", "answer"])
def test_no_false_positives(verdicts, mode):
    assert _misjudged(verdicts[mode], False) == []


def test_lenient_agrees_with_the_labels(verdicts):
    misses = _misjudged(verdicts["lenient"], True)
    assert len(misses) <= 0.02 * len(CASES), misses


def test_answer_mode_on_bare_answers(verdicts):
    misses = [m for m in _misjudged(verdicts["answer"], True)]
    assert len(misses) <= 0.02 * len(CASES), misses


def test_marked_finds_every_marked_answer(verdicts):
    """``marked`` misses only answers outside boxes and answer lines (what ``lenient`` is for)."""
    missed = [(c["id"], v.status) for c, v in zip(CASES, verdicts["marked"])
              if c["expected"] and not v.correct and v.status != "no_answer"
              and v.source in ("boxed", "final_answer", "gsm8k", "answer_line")]
    assert len(missed) <= 0.01 * len(CASES), missed
