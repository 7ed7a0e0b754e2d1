"""Losses and schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pretraining.config import ScheduleConfig
from pretraining.data import make_problems
from pretraining.dpo import pairs_from_samples, preference_losses
from pretraining.trainer import lr_multiplier


def _sig(x):
    return 1 / (1 + math.exp(-x))


PC, PR, RC, RR = -10.0, -14.0, -11.0, -12.0  # policy/ref log-probs of chosen and rejected
T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_dpo_sigmoid_loss_by_hand():
    beta = 0.1
    h = (PC - RC) - (PR - RR)  # 1 - (-2) = 3
    expected = -math.log(_sig(beta * h))
    got = preference_losses(T(PC), T(PR), T(RC), T(RR), beta, "sigmoid")
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_ipo_loss_by_hand_uses_length_normalised_log_ratios():
    beta, lc, lr = 0.5, 4.0, 2.0
    h = (PC - RC) / lc - (PR - RR) / lr  # 0.25 - (-1.0) = 1.25
    expected = (h - 1 / (2 * beta)) ** 2  # (1.25 - 1)^2
    got = preference_losses(T(PC), T(PR), T(RC), T(RR), beta, "ipo", T(lc), T(lr))
    assert got.item() == pytest.approx(expected, abs=1e-12) and expected == pytest.approx(0.0625)


def test_apo_zero_loss_by_hand():
    beta = 0.2
    expected = (1 - _sig(beta * (PC - RC))) + _sig(beta * (PR - RR))
    got = preference_losses(T(PC), T(PR), T(RC), T(RR), beta, "apo_zero")
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_rpo_alpha_adds_the_chosen_per_token_nll_by_hand():
    beta, alpha, lc = 0.1, 0.5, 5.0
    h = (PC - RC) - (PR - RR)  # 3
    expected = -math.log(_sig(beta * h)) + alpha * (-PC / lc)  # 0.5544 + 0.5 * 2.0
    got = preference_losses(T(PC), T(PR), T(RC), T(RR), beta, "sigmoid", T(lc), T(3.0), rpo_alpha=alpha)
    assert got.item() == pytest.approx(expected, abs=1e-12) and expected == pytest.approx(1.5543552, abs=1e-6)
    apo = (1 - _sig(beta * (PC - RC))) + _sig(beta * (PR - RR)) + alpha * 2.0
    got = preference_losses(T(PC), T(PR), T(RC), T(RR), beta, "apo_zero", T(lc), T(3.0), rpo_alpha=alpha)
    assert got.item() == pytest.approx(apo, abs=1e-12)
    # alpha 0 is plain DPO, and the NLL term needs the chosen length
    assert preference_losses(T(PC), T(PR), T(RC), T(RR), beta, "sigmoid", rpo_alpha=0.0).item() == pytest.approx(
        -math.log(_sig(beta * h)), abs=1e-12)
    with pytest.raises(ValueError, match="len_c"):
        preference_losses(T(PC), T(PR), T(RC), T(RR), beta, "sigmoid", rpo_alpha=alpha)


def test_rpo_gradient_raises_the_chosen_log_prob_even_when_the_margin_is_won():
    # far past the margin, sigmoid DPO has ~no gradient on pc; the NLL term still pulls pc up by alpha/len_c
    pc = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    loss = preference_losses(pc, T(-200.0), T(RC), T(RR), 0.1, "sigmoid", T(4.0), T(4.0), rpo_alpha=1.0)
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.25, abs=1e-6)


def test_losses_at_the_reference_point():
    z = T(0.0)
    assert preference_losses(z, z, z, z, 0.1, "sigmoid").item() == pytest.approx(math.log(2))
    assert preference_losses(z, z, z, z, 0.1, "apo_zero").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss='kto'"):
        preference_losses(z, z, z, z, 0.1, "kto")


def test_wsd_schedule_warms_up_holds_then_decays_to_the_floor():
    f = lr_multiplier(ScheduleConfig(kind="wsd", warmup_steps=4, decay_fraction=0.5, min_lr_ratio=0.1), 20)
    assert [round(f(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert all(f(s) == 1.0 for s in range(4, 10))
    assert f(10) < 1.0 and f(19) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 19))


def test_cosine_schedule_ends_at_the_floor():
    f = lr_multiplier(ScheduleConfig(kind="cosine", warmup_steps=0, min_lr_ratio=0.0), 10)
    assert f(0) == pytest.approx(1.0) and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)


def test_on_policy_pairs_take_a_correct_sample_else_the_reference_and_a_wrong_sample():
    a, b, c = make_problems("train", [1], 3, 0)
    samples = [[("a right", True), ("a wrong 1", False), ("a wrong 2", False)],  # own correct vs own wrong
               [("b wrong", False)],                                              # no correct sample: reference
               [("c right", True), ("c right 2", True)]]                          # nothing to reject: no pair
    pairs = pairs_from_samples([a, b, c], samples)
    assert pairs == [{"prompt": a.question, "chosen": "a right", "rejected": "a wrong 1", "answer": a.answer},
                     {"prompt": b.question, "chosen": b.solution, "rejected": "b wrong", "answer": b.answer}]
    with pytest.raises(ValueError, match="2 problems but 3 sample lists"):
        pairs_from_samples([a, b], samples)
