"""The verifier against the labelled cases, extraction, safety limits and the pool's recovery."""

from __future__ import annotations

import pytest
from verifier_cases import CASES, EXTRACTION_CASES, labelled

from rewards import VerifyConfig, extract_answer, find_answer, verify, verify_batch
from rewards.worker_pool import shared_pool


def test_case_set_is_big_and_balanced():
    assert len(CASES) >= 300
    wrong = sum(not expected for _, _, expected, _ in CASES)
    assert wrong >= len(CASES) / 3


# Correctness tests use a generous time limit: a loaded CI machine must not turn a verdict into a timeout.
RELAXED = VerifyConfig(timeout_s=20.0)


@pytest.fixture(scope="module")
def case_verdicts():
    cases = labelled()
    return cases, verify_batch([(c["completion"], c["gold"]) for c in cases], RELAXED)


@pytest.mark.parametrize("form", sorted({c[3] for c in CASES}))
def test_labelled_cases(case_verdicts, form):
    cases, verdicts = case_verdicts
    misses = [(c["gold"], c["answer"], c["expected"], v.status, v.reason)
              for c, v in zip(cases, verdicts) if c["form"] == form and v.correct != c["expected"]]
    assert not misses, f"{len(misses)} {form} cases judged wrongly: {misses}"


def test_statuses_are_consistent(case_verdicts):
    _, verdicts = case_verdicts
    for v in verdicts:
        assert v.status in ("correct", "wrong")
        assert v.correct == (v.status == "correct")
        assert v.extracted is not None


@pytest.mark.parametrize("completion,gold,expected", EXTRACTION_CASES)
def test_extraction(completion, gold, expected):
    assert extract_answer(completion) == expected


def test_last_number_fallback_is_off_by_default():
    text = "I think it is 12 but not sure"
    assert verify(text, "12").status == "no_answer"
    on = verify(text, "12", VerifyConfig(last_number_fallback=True))
    assert on.correct and find_answer(text, True).source == "last_number"


def test_unparsable_gold():
    v = verify("\\boxed{3}", "\\frac{")
    assert v.status == "unparsable_gold" and not v.correct
    assert verify("\\boxed{3}", "").status == "unparsable_gold"


def test_oversized_completion_is_an_error():
    v = verify("x" * 300, "1", VerifyConfig(max_completion_chars=100))
    assert v.status == "error" and "max_completion_chars" in v.reason


@pytest.mark.parametrize("answer", ["5^{5^{5^{5}}}", "10^{10^{10}}", "9999!", "2^{100000}",
                                    "(" * 200 + "1" + ")" * 200, "x^{99999}",
                                    "((2^{1000})^{1000})^{1000}"])
def test_caps_refuse_pathological_answers(answer):
    v = verify(f"\\boxed{{{answer}}}", "5", RELAXED)
    assert v.status == "wrong" and not v.correct
    assert "refused" in v.reason or "different" in v.reason


def test_timeout_kills_the_worker_and_the_pool_recovers():
    """An item that passes every cap but takes minutes ((9999!)^999 has 35 million digits) returns
    'timeout'; the rest of the batch still verifies and the pool keeps serving."""
    cfg = VerifyConfig(timeout_s=0.5)
    pool = shared_pool(cfg.num_workers)
    restarts = pool.restarts
    verdicts = verify_batch([("\\boxed{(9999!)^{999}}", "1"), ("\\boxed{4}", "4"), ("#### 7", "8")], cfg)
    assert verdicts[0].status == "timeout" and "time limit" in verdicts[0].reason
    assert [v.status for v in verdicts[1:]] == ["correct", "wrong"]
    assert pool.restarts > restarts
    assert verify("\\boxed{\\sqrt{9}}", "3", RELAXED).correct  # the pool still serves


def test_verify_batch_accepts_dicts_and_keeps_order():
    items = [{"completion": f"\\boxed{{{i}}}", "gold": str(i if i % 2 else i + 1)} for i in range(20)]
    verdicts = verify_batch(items, RELAXED)
    assert [v.correct for v in verdicts] == [bool(i % 2) for i in range(20)]


def test_verify_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(f"\\boxed{{\\sqrt{{{i * i}}}}}", str(i)) for i in range(1, 13)]
    with ThreadPoolExecutor(4) as ex:
        verdicts = list(ex.map(lambda j: verify(*j, RELAXED), jobs))
    assert all(v.correct for v in verdicts)
