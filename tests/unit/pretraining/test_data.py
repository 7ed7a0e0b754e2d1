"""Synthetic problems: determinism, answer format, curriculum levels, and no held-out leakage."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from pretraining.data import (DIFFICULTIES, TEMPLATES, canonical, make_documents, make_problems, mixture_documents,
                              preference_pairs, sft_conversations, split_of)


def test_same_seed_same_problems_and_different_seed_differs():
    a = make_problems("train", [1, 3, 5], 50, seed=3)
    assert a == make_problems("train", [1, 3, 5], 50, seed=3)
    assert a != make_problems("train", [1, 3, 5], 50, seed=4)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_problem_is_well_formed(split):
    for p in make_problems(split, list(DIFFICULTIES), 300, seed=0):
        assert p.split == split and p.difficulty in DIFFICULTIES and p.template in TEMPLATES[p.difficulty]
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}.")
        assert re.fullmatch(r"\d+|\d+/\d+|\d+\.\d+", p.answer), p.answer
        assert canonical(Fraction(p.answer)) == p.answer or "/" in p.answer
        assert p.answer not in p.wrong_answers and p.wrong_answers


def test_difficulties_cycle_evenly_and_level_one_is_single_operation():
    ps = make_problems("train", [1, 2], 40, seed=0)
    assert [p.difficulty for p in ps] == [1, 2] * 20
    for p in ps[::2]:
        assert re.fullmatch(r"What is \d+ [+-] \d+\?", p.question)


def test_heldout_questions_are_distinct_while_the_space_allows():
    ps = make_problems("heldout", [3, 4, 5], 300, seed=1)
    assert len({p.question for p in ps}) == 300


def test_split_is_a_partition_of_instances():
    splits = [split_of(f"What is {a} + {b}?") for a in range(21) for b in range(21)]
    assert set(splits) == {"train", "heldout"} and 0.05 < splits.count("heldout") / len(splits) < 0.15
    for p in make_problems("heldout", [1, 2], 50, 0):
        assert split_of(p.question) == "heldout"


def test_no_heldout_problem_appears_in_any_training_corpus():
    """Held-out means held-out at the problem level: no held-out question is in any training corpus, and
    no held-out level-1/2 equation is in the arithmetic-facts source. (A bare fact such as ``25 / 5 = 5``
    may still occur as an intermediate step of an unrelated word problem.)"""
    held = make_problems("heldout", list(DIFFICULTIES), 600, seed=1234)
    corpus = (mixture_documents({"problems": 0.6, "arithmetic_facts": 0.2, "counting": 0.1, "comparisons": 0.1},
                                2000, seed=0)
              + [m["content"] for c in sft_conversations(2000, 0, list(DIFFICULTIES)) for m in c]
              + [p["prompt"] for p in preference_pairs(500, 0, list(DIFFICULTIES))])
    text = "\n".join(corpus)
    facts = "\n".join(make_documents("arithmetic_facts", 1000, seed=0))
    train_questions = {p.question for p in make_problems("train", list(DIFFICULTIES), 5000, seed=0)}
    for p in held:
        assert p.question not in train_questions
        assert p.question not in text
        if p.difficulty <= 2:
            lhs = re.match(r"What is (\d+ [-+*/] \d+)\?", p.question).group(1)
            assert not re.search(rf"(?<![\d]){re.escape(lhs)} = ", facts), lhs


def test_preference_pairs_reject_a_wrong_final_answer():
    for pair in preference_pairs(200, 0, list(DIFFICULTIES)):
        assert pair["chosen"] != pair["rejected"]
        assert pair["chosen"].endswith(f"\\boxed{{{pair['answer']}}}.")
        assert not pair["rejected"].endswith(f"\\boxed{{{pair['answer']}}}.")


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="split="):
        make_problems("test", [1], 1, 0)
    with pytest.raises(ValueError, match="difficulties="):
        make_problems("train", [9], 1, 0)
    with pytest.raises(ValueError, match="source="):
        make_documents("poetry", 1, 0)
