"""The GRPO-family objective, one small function per idea.

- ``group_advantages``: mean-centred group rewards, divided by the group std (GRPO) or not (Dr.GRPO).
- ``tis_weights``: truncated importance sampling min(pi_old / pi_behaviour, cap) against the log-probs
  the rollout engine recorded, so tokens from older weights are corrected, not ignored.
- ``clipped_policy_loss``: PPO ratio loss with separate low/high clip (DAPO clip-higher).
- ``kl_k3``: the k3 estimator of KL(pi_theta || pi_ref), always >= 0.
- ``token_entropy``: entropy of the policy at every position (bonus or penalty, ``entropy_coef``).
- ``aggregate``: token-level (DAPO), sequence-level (GRPO) or constant-normalised (Dr.GRPO) reduction,
  with the denominators passed in so that gradient accumulation and several ranks give the same update
  as one big batch.
- ``grpo_loss``: the pieces put together for one micro-batch.

All functions take per-token tensors of shape ``(batch, tokens)`` and a float ``mask`` (1 on completion
tokens that count, 0 on prompt and padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.config import LossConfig


def group_advantages(rewards: torch.Tensor, normalize_std: bool, eps: float = 1e-6) -> torch.Tensor:
    """Advantages of ``rewards`` shaped ``(..., group_size)``: r - mean(r) [/ (std(r) + eps)].

    The std is the unbiased (Bessel-corrected) sample std, as in TRL/verl; a group of one has advantage 0.
    """
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not normalize_std:
        return centred
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    return centred / (rewards.std(dim=-1, keepdim=True) + eps)


def tis_weights(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Truncated importance weights min(exp(old - behaviour), cap), detached; all ones when ``cap`` is None."""
    if cap is None:
        return torch.ones_like(old_logprobs)
    return torch.exp(old_logprobs.detach() - behaviour_logprobs).clamp(max=cap)


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
    clip_low: float, clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(r*A, clip(r, 1-clip_low, 1+clip_high)*A) with r = exp(logp - old_logp).

    ``advantages`` is per token (a sequence's advantage broadcast over its tokens). Returns the loss and
    a 0/1 tensor marking tokens whose clipped term was the smaller one (the clip was active).
    """
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim, per position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, computed in fp32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@dataclass
class Normalizer:
    """Denominators of the loss over a whole optimizer step (all micro-batches of all ranks).

    ``tokens``: completion tokens that count; ``sequences``: sequences that count. Computing them over
    the step, not the micro-batch, makes accumulation and sharding give the full-batch gradient.
    """

    tokens: float
    sequences: float


def aggregate(token_values: torch.Tensor, mask: torch.Tensor, mode: str, norm: Normalizer,
              constant_norm: int = 1024) -> torch.Tensor:
    """Reduce per-token values to this micro-batch's share of the step's loss.

    - ``token``: sum(values * mask) / norm.tokens
    - ``sequence``: sum_i [sum_t(values * mask)_i / |o_i|] / norm.sequences, |o_i| = tokens with mask > 0
    - ``constant``: sum(values * mask) / (constant_norm * norm.sequences)
    """
    if mode == "token":
        return (token_values * mask).sum() / max(norm.tokens, 1.0)
    if mode == "sequence":
        per_seq = (token_values * mask).sum(-1) / (mask > 0).sum(-1).clamp(min=1)
        return per_seq.sum() / max(norm.sequences, 1.0)
    if mode == "constant":
        return (token_values * mask).sum() / (constant_norm * max(norm.sequences, 1.0))
    raise ValueError(f"unknown loss aggregation {mode!r}; expected token, sequence or constant")


@dataclass
class LossParts:
    loss: torch.Tensor
    """The micro-batch's (differentiable) share of the step loss."""
    policy: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    clip_fraction: torch.Tensor
    tis_mean: torch.Tensor
    ratio_mean: torch.Tensor
    """Token sums (detached, over masked tokens) of the parts, for metrics: divide by the token count."""


def grpo_loss(
    cfg: LossConfig, logprobs: torch.Tensor, old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor,
    advantages: torch.Tensor, mask: torch.Tensor, norm: Normalizer,
    ref_logprobs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
) -> LossParts:
    """The GRPO-family loss of one micro-batch.

    ``mask`` may carry weights below 1 (down-weighted stale tokens); ``advantages`` is per sequence
    ``(batch,)`` or per token. ``old_logprobs`` are the proximal policy's (the weights at the start of
    the step); with one optimizer step per batch they equal ``logprobs.detach()``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)
    w_tis = tis_weights(old_logprobs, behaviour_logprobs, cfg.tis_cap)
    pg, clipped = clipped_policy_loss(logprobs, old_logprobs, advantages, cfg.clip_low, cfg.clip_high)
    per_token = w_tis * pg
    kl = torch.zeros_like(logprobs)
    if cfg.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs (a reference model)")
        kl = kl_k3(logprobs, ref_logprobs)
        per_token = per_token + cfg.kl_coef * kl
    ent = entropy if entropy is not None else torch.zeros_like(logprobs)
    if cfg.entropy_coef != 0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the per-token entropy")
        per_token = per_token - cfg.entropy_coef * ent
    loss = aggregate(per_token, mask, cfg.aggregation, norm, cfg.constant_norm)
    on = (mask > 0).float()
    with torch.no_grad():
        ratio = torch.exp(logprobs.detach() - old_logprobs.detach())
        return LossParts(
            loss=loss, policy=(pg.detach() * on).sum(), kl=(kl.detach() * on).sum(),
            entropy=(ent.detach() * on).sum(), clip_fraction=(clipped * on).sum(),
            tis_mean=(w_tis * on).sum(), ratio_mean=(ratio * on).sum(),
        )
