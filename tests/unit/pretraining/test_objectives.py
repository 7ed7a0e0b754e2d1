"""Losses and schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pretraining.config import ScheduleConfig
from pretraining.dpo import preference_losses
from pretraining.trainer import lr_multiplier, param_groups


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


def test_no_weight_decay_on_embeddings_and_norms(tiny_model):
    decay, no_decay = param_groups(tiny_model, 0.1)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    assert all("embed" not in names[id(p)] and "norm" not in names[id(p)] for p in decay["params"])
    assert any("embed" in names[id(p)] for p in no_decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
