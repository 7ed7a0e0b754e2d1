"""GRPO-family loss pieces against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from learner.config import LossConfig
from learner.losses import (Normalizer, aggregate, clipped_policy_loss, group_advantages, grpo_loss, kl_k3,
                            tis_weights, token_entropy, token_logprobs)


def test_grpo_advantages_divide_by_unbiased_std():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), normalize_std=True, eps=0.0)
    # mean 0.5, centred +-0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735
    assert adv.tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)


def test_drgrpo_advantages_only_centre():
    adv = group_advantages(torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 6.0]]), normalize_std=False)
    assert adv.tolist() == [[1.0, -1.0, 0.0], [-2.0, -2.0, 4.0]]


def test_equal_rewards_give_zero_advantage_not_nan():
    for std in (True, False):
        assert group_advantages(torch.tensor([1.0, 1.0, 1.0]), normalize_std=std).tolist() == [0.0, 0.0, 0.0]
    assert group_advantages(torch.tensor([5.0]), normalize_std=True).tolist() == [0.0]


def test_tis_weights_are_truncated_ratio_to_behaviour():
    old = torch.tensor([-1.0, -1.0, -3.0])
    behaviour = torch.tensor([-2.0, -0.5, -3.0])
    w = tis_weights(old, behaviour, cap=2.0)
    # exp(1) = 2.718 -> capped at 2; exp(-0.5) = 0.6065; equal -> 1
    assert w.tolist() == pytest.approx([2.0, math.exp(-0.5), 1.0], abs=1e-6)
    assert tis_weights(old, behaviour, cap=None).tolist() == [1.0, 1.0, 1.0]


def test_tis_weights_carry_no_gradient():
    old = torch.tensor([-1.0], requires_grad=True)
    assert not tis_weights(old, torch.tensor([-2.0]), cap=2.0).requires_grad


def test_clipped_loss_separate_low_and_high_clip():
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5, 0.7])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0])
    loss, clipped = clipped_policy_loss(ratio.log(), torch.zeros(5), adv, clip_low=0.2, clip_high=0.28)
    # A>0,r=1.5: min(1.5, 1.28) -> -1.28 clipped | A>0,r=0.5: min(.5,.8) -> -.5 | A<0,r=0.5: min(-.5,-.8) -> .8 clipped
    # A<0,r=1.5: min(-1.5,-1.28) -> 1.5 | A<0,r=0.7: min(-.7,-.8) -> .8 clipped
    assert loss.tolist() == pytest.approx([-1.28, -0.5, 0.8, 1.5, 0.8], abs=1e-6)
    assert clipped.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_clipped_loss_gradient_at_ratio_one_is_minus_advantage():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss, _ = clipped_policy_loss(logp, logp.detach(), torch.tensor([2.0, -3.0]), 0.2, 0.28)
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([-2.0, 3.0])


def test_kl_k3():
    logp = torch.log(torch.tensor([0.5, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.3]))
    # d = log(0.25/0.5) = -0.693147: 0.5 + 0.693147 - 1 = 0.193147; equal policies -> 0
    assert kl_k3(logp, ref).tolist() == pytest.approx([0.193147, 0.0], abs=1e-6)


def test_entropy_and_logprobs():
    logits = torch.tensor([[[0.0, 0.0], [100.0, 0.0]]])
    assert token_entropy(logits).tolist()[0] == pytest.approx([math.log(2), 0.0], abs=1e-6)
    assert token_logprobs(logits, torch.tensor([[1, 0]])).tolist()[0] == pytest.approx([-math.log(2), 0.0], abs=1e-6)


VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


@pytest.mark.parametrize("mode,expected", [("token", 15 / 5), ("sequence", (6 / 3 + 9 / 2) / 2),
                                           ("constant", 15 / (10 * 2))])
def test_aggregation_modes(mode, expected):
    assert float(aggregate(VALUES, MASK, mode, Normalizer(tokens=5, sequences=2), constant_norm=10)) == pytest.approx(expected)


def test_aggregation_uses_step_wide_denominators():
    # this micro-batch holds 5 of the step's 10 tokens: its share is sum / 10
    assert float(aggregate(VALUES, MASK, "token", Normalizer(tokens=10, sequences=4))) == pytest.approx(1.5)


def test_sequence_aggregation_keeps_downweighted_tokens_downweighted():
    half = MASK * 0.5
    assert float(aggregate(VALUES, half, "sequence", Normalizer(5, 2))) == pytest.approx(3.25 / 2)


def test_grpo_loss_on_policy_is_minus_mean_advantage():
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    cfg = LossConfig(tis_cap=None, aggregation="token")
    parts = grpo_loss(cfg, logp, logp.detach(), logp.detach(), torch.tensor([1.0, -1.0]), MASK, Normalizer(5, 2))
    assert float(parts.loss.detach()) == pytest.approx(-(1 * 3 - 1 * 2) / 5)
    assert float(parts.clip_fraction) == 0.0 and float(parts.ratio_mean) == pytest.approx(5.0)


def test_grpo_loss_applies_tis_and_kl():
    logp = torch.full((1, 2), math.log(0.5))
    behaviour = torch.tensor([[math.log(0.25), math.log(0.5)]])  # TIS weights 2, 1
    ref = torch.full((1, 2), math.log(0.25))  # k3 = 0.193147 per token
    cfg = LossConfig(tis_cap=5.0, kl_coef=0.1, aggregation="token")
    parts = grpo_loss(cfg, logp, logp, behaviour, torch.tensor([1.0]), torch.ones(1, 2), Normalizer(2, 1),
                      ref_logprobs=ref)
    assert float(parts.loss) == pytest.approx((-2.0 - 1.0) / 2 + 0.1 * 0.193147, abs=1e-6)
    assert float(parts.tis_mean) == pytest.approx(3.0)


def test_grpo_loss_entropy_bonus_lowers_loss():
    logp = torch.zeros(1, 2)
    ent = torch.tensor([[1.0, 3.0]])
    cfg = LossConfig(entropy_coef=0.01, tis_cap=None)
    parts = grpo_loss(cfg, logp, logp, logp, torch.tensor([0.0]), torch.ones(1, 2), Normalizer(2, 1), entropy=ent)
    assert float(parts.loss) == pytest.approx(-0.01 * 2.0)


def test_grpo_loss_negative_entropy_coef_is_a_penalty():
    logp = torch.zeros(1, 2, requires_grad=True)
    ent = torch.tensor([[1.0, 3.0]])
    cfg = LossConfig(entropy_coef=-0.05, tis_cap=None)
    parts = grpo_loss(cfg, logp, logp.detach(), logp.detach(), torch.tensor([0.0]), torch.ones(1, 2),
                      Normalizer(2, 1), entropy=ent)
    assert float(parts.loss) == pytest.approx(0.05 * 2.0)  # mean entropy 2.0 added: minimising it sharpens


def test_kl_without_reference_is_a_clear_error():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(LossConfig(kl_coef=0.1), x, x, x, torch.zeros(1), torch.ones(1, 1), Normalizer(1, 1))
