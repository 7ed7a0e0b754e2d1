"""Synthetic, verifiable math word problems and the corpora built from them.

Everything is deterministic given a seed. A problem instance is identified by its question text
(template + operands); :func:`split_of` assigns that key to ``train`` or ``heldout`` by a hash, so the two splits
can never share an instance (``tests/unit/pretraining/test_data.py`` proves the corpora hold no
held-out problem). Difficulty levels form the GRPO curriculum:

1. single-operation addition / subtraction with numbers up to 20
2. two-digit addition / subtraction, times tables, exact division
3. two-step word problems (shopping with change, ages)
4. rates, fractions of quantities, fraction sums (fraction and decimal answers)
5. three/four-step problems (mixed purchases split among friends, discounts)

Corpora: :func:`make_documents` (pretraining sources: ``problems``, ``arithmetic_facts``,
``counting``, ``comparisons``), :func:`sft_conversations` and :func:`preference_pairs` (a correct
solution vs a plausible wrong one: an arithmetic slip or a skipped final step).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 10
"""One hash bucket in ``HELDOUT_BUCKETS`` of every template's operand space is held out (10%)."""


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    """Canonical answer string: ``"42"``, ``"3/4"``, ``"2.5"``."""
    solution: str
    """Worked step-by-step solution ending in ``\\boxed{answer}``."""
    difficulty: int
    template: str
    split: str
    wrong_answers: tuple[str, ...] = ()
    """Plausible wrong final answers (arithmetic slip, skipped last step), for preference pairs."""


@dataclass(frozen=True)
class _Draw:
    operands: tuple
    question: str
    steps: list[str]
    """Worked steps; the last one computes the final answer."""
    answer: Fraction
    fmt: str = "auto"
    """``auto`` (integer, else decimal if terminating, else fraction) or ``fraction``."""
    early: Fraction | None = None
    """The value one would box after skipping the final step (a plausible wrong answer)."""


def canonical(value: Fraction, fmt: str = "auto") -> str:
    """The canonical string of an exact answer: ``42``, ``3/4`` or ``2.5``."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    if fmt == "auto":
        d = value.denominator
        while d % 2 == 0:
            d //= 2
        while d % 5 == 0:
            d //= 5
        if d == 1:  # terminating decimal
            s = f"{float(value):.6f}".rstrip("0").rstrip(".")
            if Fraction(s) == value:
                return s
    return f"{value.numerator}/{value.denominator}"


def split_of(question: str) -> str:
    """``train`` or ``heldout`` for one problem instance: a pure function of its question text, so the
    same question (e.g. ``What is 20 + 19?`` from two templates) always lands in the same split."""
    h = hashlib.sha256(" ".join(question.split()).encode()).digest()
    return "heldout" if int.from_bytes(h[:8], "big") % HELDOUT_BUCKETS == 0 else "train"


# ---------------------------------------------------------------------------- templates
NAMES = ["Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivy", "Jon", "Kai", "Lea", "Max", "Nia"]
ITEMS = ["apple", "pen", "book", "cup", "ball", "card", "toy", "kite", "box", "hat"]


def _add_small(r: random.Random) -> _Draw:
    a, b = r.randint(0, 20), r.randint(0, 20)
    return _Draw((a, b), f"What is {a} + {b}?", [f"{a} + {b} = {a + b}."], Fraction(a + b))


def _sub_small(r: random.Random) -> _Draw:
    a = r.randint(0, 20)
    b = r.randint(0, a)
    return _Draw((a, b), f"What is {a} - {b}?", [f"{a} - {b} = {a - b}."], Fraction(a - b))


def _add_two_digit(r: random.Random) -> _Draw:
    a, b = r.randint(10, 99), r.randint(10, 99)
    if r.random() < 0.5:
        return _Draw((a, b, "+"), f"What is {a} + {b}?", [f"{a} + {b} = {a + b}."], Fraction(a + b))
    a, b = max(a, b), min(a, b)
    return _Draw((a, b, "-"), f"What is {a} - {b}?", [f"{a} - {b} = {a - b}."], Fraction(a - b))


def _times_table(r: random.Random) -> _Draw:
    a, b = r.randint(2, 12), r.randint(2, 12)
    return _Draw((a, b), f"What is {a} * {b}?", [f"{a} * {b} = {a * b}."], Fraction(a * b))


def _divide_exact(r: random.Random) -> _Draw:
    b, q = r.randint(2, 12), r.randint(1, 12)
    return _Draw((b * q, b), f"What is {b * q} / {b}?", [f"{b * q} / {b} = {q}."], Fraction(q))


def _shopping_change(r: random.Random) -> _Draw:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    n, p = r.randint(2, 9), r.randint(2, 9)
    bill = r.choice([b for b in (20, 50, 100) if b >= n * p])
    q = (f"{name} buys {n} {item}s at {p} dollars each and pays with a {bill} dollar bill. "
         f"How much change does {name} get?")
    steps = [f"The {item}s cost {n} * {p} = {n * p} dollars.", f"The change is {bill} - {n * p} = {bill - n * p} dollars."]
    return _Draw((name, item, n, p, bill), q, steps, Fraction(bill - n * p), early=Fraction(n * p))


def _ages(r: random.Random) -> _Draw:
    a, b = r.sample(NAMES, 2)
    x, d, k = r.randint(3, 40), r.randint(1, 30), r.randint(1, 20)
    q = f"{a} is {x} years old. {b} is {d} years older than {a}. How old will {b} be in {k} years?"
    steps = [f"{b} is {x} + {d} = {x + d} years old now.", f"In {k} years {b} will be {x + d} + {k} = {x + d + k}."]
    return _Draw((a, b, x, d, k), q, steps, Fraction(x + d + k), early=Fraction(x + d))


def _rate(r: random.Random) -> _Draw:
    t = r.choice([2, 4, 5])
    speed = Fraction(r.randint(3, 40) * r.choice([1, 1, 2]), r.choice([1, 2]))
    d = speed * t
    if d.denominator != 1:
        d, speed = Fraction(int(d)), Fraction(int(d), t)
    t2 = r.randint(1, 9)
    q = f"A car travels {d} km in {t} hours. At the same speed, how many km does it travel in {t2} hours?"
    steps = [f"The speed is {d} / {t} = {canonical(speed)} km per hour.",
             f"In {t2} hours it travels {canonical(speed)} * {t2} = {canonical(speed * t2)} km."]
    return _Draw((int(d), t, t2), q, steps, speed * t2, early=speed)


def _fraction_of(r: random.Random) -> _Draw:
    den = r.choice([2, 3, 4, 5, 8, 10])
    num = r.randint(1, den - 1)
    n = r.randint(2, 60)
    value = Fraction(num * n, den)
    q = f"What is {num}/{den} of {n}?"
    steps = [f"{num}/{den} of {n} is {num} * {n} / {den} = {num * n} / {den} = {canonical(value)}."]
    return _Draw((num, den, n), q, steps, value)


def _fraction_sum(r: random.Random) -> _Draw:
    b, d = r.randint(2, 9), r.randint(2, 9)
    a, c = r.randint(1, b - 1), r.randint(1, d - 1)
    value = Fraction(a, b) + Fraction(c, d)
    q = f"What is {a}/{b} + {c}/{d}? Give the answer as a fraction."
    steps = [f"{a}/{b} + {c}/{d} = {a * d}/{b * d} + {c * b}/{b * d} = {a * d + c * b}/{b * d}.",
             f"In lowest terms that is {canonical(value, 'fraction')}."]
    return _Draw((a, b, c, d), q, steps, value, fmt="fraction", early=Fraction(a + c, b + d) if b + d else None)


def _split_bill(r: random.Random) -> _Draw:
    name = r.choice(NAMES)
    i1, i2 = r.sample(ITEMS, 2)
    a, p, b, q_ = r.randint(2, 6), r.randint(2, 9), r.randint(2, 6), r.randint(2, 9)
    k = r.choice([2, 4, 5])
    t1, t2 = a * p, b * q_
    total = t1 + t2
    q = (f"{name} buys {a} {i1}s at {p} dollars each and {b} {i2}s at {q_} dollars each, then splits the "
         f"cost equally among {k} friends. How many dollars does each friend pay?")
    steps = [f"The {i1}s cost {a} * {p} = {t1} dollars.", f"The {i2}s cost {b} * {q_} = {t2} dollars.",
             f"The total is {t1} + {t2} = {total} dollars.",
             f"Each friend pays {total} / {k} = {canonical(Fraction(total, k))} dollars."]
    return _Draw((name, i1, i2, a, p, b, q_, k), q, steps, Fraction(total, k), early=Fraction(total))


def _discount(r: random.Random) -> _Draw:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    n, p = r.randint(2, 12), r.randint(3, 20)
    pct = r.choice([10, 20, 25, 50])
    cost = n * p
    off = Fraction(cost * pct, 100)
    q = f"A {item} costs {p} dollars. {name} buys {n} of them with a {pct}% discount. How many dollars does {name} pay?"
    steps = [f"Without the discount the cost is {n} * {p} = {cost} dollars.",
             f"The discount is {pct}% of {cost} = {canonical(off)} dollars.",
             f"{name} pays {cost} - {canonical(off)} = {canonical(cost - off)} dollars."]
    return _Draw((name, item, n, p, pct), q, steps, cost - off, early=off)


TEMPLATES: dict[int, dict[str, Callable[[random.Random], _Draw]]] = {
    1: {"add_small": _add_small, "sub_small": _sub_small},
    2: {"add_two_digit": _add_two_digit, "times_table": _times_table, "divide_exact": _divide_exact},
    3: {"shopping_change": _shopping_change, "ages": _ages},
    4: {"rate": _rate, "fraction_of": _fraction_of, "fraction_sum": _fraction_sum},
    5: {"split_bill": _split_bill, "discount": _discount},
}
DIFFICULTIES = tuple(sorted(TEMPLATES))


def _wrong_answers(draw: _Draw, r: random.Random) -> tuple[str, ...]:
    right = canonical(draw.answer, draw.fmt)
    out: list[str] = []
    if draw.early is not None and canonical(draw.early, draw.fmt) != right:
        out.append(canonical(draw.early, draw.fmt))  # skipped the final step
    for _ in range(8):  # arithmetic slip
        delta = r.choice([-10, -2, -1, 1, 1, 2, 10])
        slip = canonical(draw.answer + delta, draw.fmt)
        if slip != right and not slip.startswith("-") and slip not in out:
            out.append(slip)
            break
    return tuple(out)


def _problem(template: str, difficulty: int, draw: _Draw, split: str, r: random.Random) -> Problem:
    answer = canonical(draw.answer, draw.fmt)
    solution = "\n".join(draw.steps) + f"\nThe answer is \\boxed{{{answer}}}."
    return Problem(draw.question, answer, solution, difficulty, template, split, _wrong_answers(draw, r))


def make_problems(split: str, difficulties: list[int], n: int, seed: int) -> list[Problem]:
    """``n`` problems of ``split`` (``train`` | ``heldout``), cycling evenly through ``difficulties``.

    Distinct questions while the operand space allows it (held-out level 1 has ~70); then repeats.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    bad = [d for d in difficulties if d not in TEMPLATES]
    if bad or not difficulties:
        raise ValueError(f"difficulties={difficulties!r}: each must be one of {DIFFICULTIES}")
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    r = random.Random(f"{split}|{seed}")
    out: list[Problem] = []
    seen: dict[int, set[str]] = {d: set() for d in difficulties}
    misses = {d: 0 for d in difficulties}
    while len(out) < n:
        level = difficulties[len(out) % len(difficulties)]
        name, fn = r.choice(sorted(TEMPLATES[level].items()))
        draw = fn(r)
        if split_of(draw.question) != split:
            continue
        if misses[level] < 500 and draw.question in seen[level]:
            misses[level] += 1  # after 500 straight repeats the level's space is spent: allow repeats
            continue
        if misses[level] < 500:
            seen[level].add(draw.question)
            misses[level] = 0
        out.append(_problem(name, level, draw, split, r))
    return out


# ---------------------------------------------------------------------------- corpora
def problem_text(p: Problem) -> str:
    """A problem and its worked solution as plain pretraining text."""
    return f"Question: {p.question}\nSolution: {p.solution}"


def _arithmetic_facts(r: random.Random, seed: int) -> str:
    """A few equations taken from train problems of levels 1-2 (so no held-out fact leaks)."""
    probs = make_problems("train", [1, 2], r.randint(4, 8), seed)
    return "\n".join(p.solution.split("\n")[0].rstrip(".") for p in probs)


def _counting(r: random.Random) -> str:
    start, step = r.randint(0, 90), r.choice([1, 1, 2, 5, 10])
    return "Counting: " + ", ".join(str(start + i * step) for i in range(r.randint(5, 12))) + "."


def _comparisons(r: random.Random) -> str:
    lines = []
    for _ in range(r.randint(2, 5)):
        a, b = r.randint(0, 99), r.randint(0, 99)
        rel = "greater than" if a > b else "less than" if a < b else "equal to"
        lines.append(f"{a} is {rel} {b}.")
    return " ".join(lines)


DOCUMENT_SOURCES = ("problems", "arithmetic_facts", "counting", "comparisons")


def make_documents(source: str, n: int, seed: int, difficulties: list[int] | None = None) -> list[str]:
    """``n`` pretraining documents of one ``source`` (see ``DOCUMENT_SOURCES``), train split only."""
    if source not in DOCUMENT_SOURCES:
        raise ValueError(f"source={source!r}: expected one of {DOCUMENT_SOURCES}")
    if source == "problems":
        return [problem_text(p) for p in make_problems("train", list(difficulties or DIFFICULTIES), n, seed)]
    r = random.Random(f"{source}|{seed}")
    if source == "arithmetic_facts":
        return [_arithmetic_facts(r, seed * 1_000_003 + i) for i in range(n)]
    fn = _counting if source == "counting" else _comparisons
    return [fn(r) for _ in range(n)]


def mixture_documents(mixture: dict[str, float], n: int, seed: int, difficulties: list[int] | None = None) -> list[str]:
    """``n`` documents drawn from ``mixture`` (source -> weight), shuffled deterministically."""
    if not mixture or sum(mixture.values()) <= 0:
        raise ValueError(f"mixture={mixture!r}: needs at least one source with a positive weight")
    total = sum(mixture.values())
    docs: list[str] = []
    for i, (source, w) in enumerate(sorted(mixture.items())):
        docs += make_documents(source, round(n * w / total), seed * 31 + i, difficulties)
    random.Random(seed).shuffle(docs)
    return docs


def sft_conversations(n: int, seed: int, difficulties: list[int]) -> list[list[dict[str, str]]]:
    """``n`` chat conversations (user question, assistant worked solution) from the train split."""
    return [[{"role": "user", "content": p.question}, {"role": "assistant", "content": p.solution}]
            for p in make_problems("train", difficulties, n, seed)]


def wrong_solution(p: Problem, wrong: str) -> str:
    """``p``'s solution with a wrong final answer: the last step and the box both carry ``wrong``."""
    lines = p.solution.split("\n")
    last_step = lines[-2]
    if last_step.rstrip(".").endswith(p.answer):
        head = last_step.rstrip(".")[: -len(p.answer)]
        lines[-2] = head + wrong + "."
    elif f"= {p.answer} " in last_step:
        lines[-2] = last_step.replace(f"= {p.answer} ", f"= {wrong} ")
    lines[-1] = f"The answer is \\boxed{{{wrong}}}."
    return "\n".join(lines)


def preference_pairs(n: int, seed: int, difficulties: list[int]) -> list[dict[str, str]]:
    """``n`` DPO pairs ``{prompt, chosen, rejected, answer}`` from the train split."""
    out = []
    for i, p in enumerate(make_problems("train", difficulties, n, seed)):
        wrong = p.wrong_answers[i % len(p.wrong_answers)] if p.wrong_answers else p.answer + "1"
        out.append({"prompt": p.question, "chosen": p.solution, "rejected": wrong_solution(p, wrong), "answer": p.answer})
    return out
