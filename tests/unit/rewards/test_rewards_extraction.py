"""Extraction modes, golds as users have them, linear-time extraction on hostile input, and the
precision rules (crafted wrong answers that must never be judged correct)."""

from __future__ import annotations

import time

import pytest

from rewards import VerifyConfig, find_answer, verify
from rewards.extract import MAX_LINE_CHARS, MAX_TAIL_CHARS, gold_answer

RELAXED = {"timeout_s": 20.0}  # correctness, not speed: a loaded machine must not turn verdicts into timeouts
MARKED, LENIENT, ANSWER = (VerifyConfig(extraction=m, **RELAXED) for m in ("marked", "lenient", "answer"))


def test_marked_is_the_default():
    assert VerifyConfig().extraction == "marked"
    assert verify("So the total is $18$.", "18").status == "no_answer"


@pytest.mark.parametrize("completion,answer,source", [
    ("Thus \\boxed{7}. The answer is 8.", "7", "boxed"),
    ("We get 5 apples. The answer is 12.", "12", "final_answer"),
    ("blah\n#### 1,000", "1,000", "gsm8k"),
    ("Answer: $x = 2$", "x = 2", "answer_line"),
    ("Okay so the final answer should be 2/3", "2/3", "final_answer"),
    ("The correct option is (B).", "(B)", "final_answer"),
    ("We get\n\\[\nx = \\frac{-b}{2a} = -\\frac{3}{2}\n\\]\nwhich is the vertex.", "x = \\frac{-b}{2a} = -\\frac{3}{2}", "math"),
    ("Therefore, the solutions are $x = 2$ and $x = -3$.", "x = 2, x = -3", "math"),
    ("Weng earns $0.2 per minute, so 0.2 x 50 = $10. In total she made 10 dollars.", "10", "last_number"),
    ("The population is 7,425,000.", "7,425,000", "last_number"),
    ("The price is 1000,99 euros.", "1000,99", "last_number"),
    ("The rate is 15\\%.", "15\\%", "last_number"),
    ("I'm not sure.", None, "none"),
    ("... so the answer is \\boxed{4", None, "none"),
])
def test_lenient_extraction(completion, answer, source):
    assert find_answer(completion, extraction="lenient") == (answer, source)


def test_lenient_reads_what_marked_does_not():
    text = "Let $x$ be the number of apples. Then $2x + 3 = 11$, so $x = 4$."
    assert verify(text, "4", MARKED).status == "no_answer"
    assert verify(text, "4", LENIENT).correct


def test_answer_mode_takes_the_completion_as_the_answer():
    assert verify("\\frac{1}{2}", "0.5", ANSWER).correct
    assert verify("$\\boxed{3}$", "3", ANSWER).correct
    assert find_answer("  x = 4 ", extraction="answer") == ("x = 4", "answer")
    assert verify("", "3", ANSWER).status == "no_answer"


def test_several_boxed_candidates_are_a_list_not_a_choice():
    hedge = "The answer is $\\boxed{3}$ or $\\boxed{4}$."
    assert find_answer(hedge).answer == "3, 4"
    assert not verify(hedge, "3", MARKED).correct and not verify(hedge, "4", LENIENT).correct
    assert verify("So $x=\\boxed{2}$ and $x=\\boxed{3}$.", "2, 3", MARKED).correct  # two solutions asked for
    assert verify("\\boxed{5}, rechecked: \\boxed{5}", "5", MARKED).correct  # the same box twice
    assert verify("Try \\boxed{3}.\n\nNo, it is \\boxed{4}.", "4", MARKED).correct  # only the last paragraph


@pytest.mark.parametrize("gold,answer", [
    ("We have $a=3$, $b=4$, so $ab = \\boxed{12}$.", "12"),
    ("Try \\boxed{1}... In fact it is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
    ("$12$", "12"), ("$$12$$", "12"), ("\\(12\\)", "12"), ("  8  \n", "8"), ("8.", "8"), ("12 cm", "12 cm"),
])
def test_gold_answer(gold, answer):
    assert gold_answer(gold) == answer


@pytest.mark.parametrize("gold,pred", [
    ("12 dollars", "12"), ("12,000", "12000"), ("\\$1,234.50", "1234.5"), ("\\text{(C)}", "C)"),
    ("$\\frac{\\sqrt{3}}{2}$", "\\frac{1}{2}\\sqrt{3}"), ("The answer is $\\boxed{x^2+1}$.", "1+x^2"),
])
def test_golds_as_users_have_them(gold, pred):
    assert verify(f"\\boxed{{{pred}}}", gold, MARKED).correct


# ------------------------------------------------------------------ precision before recall

@pytest.mark.parametrize("gold,pred", [
    ("x", "x+\\sin(1000\\pi x)"), ("x", "x+\\cos(2000\\pi x)-1"), ("x", "x+\\tan(1000\\pi x)"),
    ("x", "x\\cos(2000\\pi x)"), ("x+y", "x+y+\\sin(1000\\pi x)\\sin(1000\\pi y)"), ("x", "x+10^{-30}\\sin(x)"),
    ("x", "x+(\\sqrt{2}+\\sqrt{3}-\\sqrt{5+2\\sqrt{6}})+10^{-200}"),
    ("\\pi", "\\pi+10^{-50}"), ("\\pi", "\\pi-10^{-500}"), ("0", "(\\sqrt{2}-1)^{300}"),
    ("640320^3+744", "e^{\\pi\\sqrt{163}}"), ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}+10^{-300}"),
    ("[1,2]", "(1,2)"), ("(1,2)", "[1,2]"), ("[1,2)", "(1,2]"), ("(1,2)", "\\{1, 2\\}"), ("3", "3 = 4"),
    ("\\pi", "\\pi(1+10^{-30})"), ("A", "A \\text{ or } B"), ("5", "5 \\text{ or } 6"), ("0", "0=0"), ("x", "x=x"), ("0", "x-x=0"),
    ("11a+c", "7=11a+c"), ("7=11a+c", "11a+c"), ("73", "m+n=73"), ("x", "x=2x-x"),
    ("2\\pi", "6.28"), ("\\pi", "3.14"), ("3.14", "\\pi"), ("\\frac{1}{3}", "0.333"), ("\\sqrt{2}", "1.4142"),
    ("100", "99.99999"), ("3", "3 or 4"), ("3", "\\pm 3"), ("A", "(A) or (B)"), ("5", "x"),
])
def test_crafted_wrong_answers_are_wrong(gold, pred):
    v = verify(f"\\boxed{{{pred}}}", gold, MARKED)
    assert not v.correct and v.status in ("wrong", "unparsable_gold"), v


@pytest.mark.parametrize("gold,pred", [
    ("\\pi", "3.14159265"), ("2\\pi", "6.2831853"), ("\\frac{1}{7}", "0.142857142857"),
    ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}"), ("\\cos 2x", "\\cos^2 x-\\sin^2 x"), ("(n-1)!", "\\frac{n!}{n}"),
    ("m+n", "n+m"), ("-\\frac32", "x=\\frac{-b}{2a}=-\\frac{3}{2}"), ("3", "\\frac{6}{2}=3"), ("f(x)=x^2", "x^2"), ("\\frac{22}{7}", "\\frac{22}{7}\\approx 3.14"),
])
def test_equal_answers_still_verify(gold, pred):
    assert verify(f"\\boxed{{{pred}}}", gold, MARKED).correct


def test_rounded_decimals_only_when_configured():
    assert not verify("\\boxed{0.33}", "\\frac{1}{3}", MARKED).correct
    loose = VerifyConfig(accept_rounded_decimals=True, **RELAXED)
    assert verify("\\boxed{0.33}", "\\frac{1}{3}", loose).correct
    assert verify("\\boxed{6.28}", "2\\pi", loose).correct
    assert not verify("\\boxed{6.3}", "2\\pi", loose).correct  # at least two decimals


def test_test_points_are_unpredictable():
    from rewards.equivalence import _random_point

    points = {_random_point() for _ in range(50)}
    assert len(points) == 50 and all(0.2 < p < 3.2 for p in points)
    assert not any(p * 1000 == int(p * 1000) for p in points)


def test_comparison_never_evaluates_strings(monkeypatch):
    import builtins

    from rewards.equivalence import compare

    real_eval, real_exec = builtins.eval, builtins.exec

    def guard(real):
        def call(source, *a, **k):  # imports exec code objects; any text is refused
            if isinstance(source, (str, bytes)):
                raise AssertionError(f"{real.__name__} of {source!r}")
            return real(source, *a, **k)
        return call

    monkeypatch.setattr(builtins, "eval", guard(real_eval))
    monkeypatch.setattr(builtins, "exec", guard(real_exec))
    cfg = VerifyConfig()
    assert compare("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", cfg)[0]
    assert not compare("x", "x+\\sin(1000\\pi x)", cfg)[0]
    assert compare("(-\\infty,1)\\cup(2,\\infty)", "x<1 \\text{ or } x>2", cfg)[0]


# ------------------------------------------------------------------ bounded work on hostile input

N = 100_000
HOSTILE = {
    "whitespace run in an answer line": "Answer: a" + " " * 99_000 + "b",
    "tab run": "Answer: a" + "\t" * 60_000 + "b",
    "newline run": "Answer:" + "\n" * N + "5",
    "dots": "The answer is " + "." * N,
    "sentence ends": "The answer is " + ". " * (N // 2),
    "hope after spaces": "The answer is 5" + " " * N + "I hope it is correct",
    "unclosed boxes": "\\boxed{" * (N // 7),
    "braces": "{" * N + "}" * N,
    "dollars": "$" * N,
    "currency prose": "$1 word word " * (N // 13),
    "markers": "answer:" * (N // 7) + "#### " * (N // 5),
    "digit groups": "1," * (N // 2) + "111 " * (N // 4),
    "many boxes": "".join(f"\\boxed{{{i}}}" for i in range(N // 12)),
    "backslashes": "\\" * N + "\\[" * N,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_extraction_is_linear_on_hostile_input(name):
    """Each input is 100-200k characters; the quadratic regex this replaces took ~60 s on the first one.
    The bound is 30x above what a linear scan needs even on a loaded machine, and 30x below quadratic."""
    text = HOSTILE[name]
    for mode in ("marked", "lenient", "answer"):
        t0 = time.perf_counter()
        found = find_answer(text, True, mode)
        assert time.perf_counter() - t0 < 2.0, (name, mode)
        if mode != "answer" and found.answer is not None:
            assert len(found.answer) <= max(MAX_LINE_CHARS, MAX_TAIL_CHARS)  # capped before any parsing


def test_hostile_completion_gets_a_verdict_quickly():
    v = verify(HOSTILE["whitespace run in an answer line"], "b", VerifyConfig(extraction="lenient", **RELAXED))
    assert v.status in ("correct", "wrong") and v.extracted is not None
