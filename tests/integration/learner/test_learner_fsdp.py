"""The Ray learner group: 2 gloo FSDP2 ranks give the same update as 1 rank (tiny random Qwen3)."""

from __future__ import annotations

import torch

from learner.actor import Learner
from learner.config import LearnerConfig, LossConfig


def test_two_gloo_ranks_match_one_rank(ray_local, tiny_checkpoint, groups_factory):
    groups = groups_factory(4, 4, seed=21)  # 16 sequences -> 2 optimizer steps of 8 (PPO mini-batches)
    loss = LossConfig(advantage="grpo", aggregation="token", tis_cap=2.0)
    common = dict(lr=3e-3, micro_batch_size=2, warmup_steps=0, grad_clip=1.0)
    runs = {}
    for world, accum in ((1, 4), (2, 2)):  # 8 sequences per optimizer step either way
        learner = Learner(LearnerConfig(world_size=world, grad_accumulation=accum, **common), str(tiny_checkpoint), loss)
        before = learner.full_state_dict()
        metrics = learner.train_step(groups)
        runs[world] = (metrics, learner.full_state_dict(), before)
        learner.shutdown()
    (m1, w1, before), (m2, w2, before2) = runs[1], runs[2]
    assert all(torch.equal(before[k], before2[k]) for k in before)
    assert m1["optimizer_steps"] == m2["optimizer_steps"] == 2 and m2["version"] == 2
    for key in ("loss", "policy_loss", "entropy", "grad_norm", "clip_fraction", "tis_weight_mean"):
        assert abs(m1[key] - m2[key]) <= 1e-5 * max(1.0, abs(m1[key])), (key, m1[key], m2[key])
    assert m1["loss_tokens"] == m2["loss_tokens"] and m1["train_tokens"] == m2["train_tokens"]
    assert set(w1) == set(w2)
    # Adam's first steps move every weight by ~lr (3e-3); the two runs differ only by float rounding in
    # the gradient reduction order, which Adam's normalisation turns into < 1e-5 absolute differences
    for k in w1:
        d1, d2 = w1[k] - before[k], w2[k] - before[k]
        assert float(d1.abs().max()) > 1e-3, f"{k} did not move"
        assert float((d1 - d2).abs().max()) < 1e-5, f"{k}: max |w1 - w2| = {float((d1 - d2).abs().max()):.2e}"
        assert float((d1 - d2).norm() / d1.norm()) < 1e-3, k
