"""The loss path of one optimizer step: micro-batches -> log-probs -> GRPO loss -> backward, and the step's
totals by name.

- ``micro_batch_backward``: completion-token log-probs of the policy (and of the reference model when
  the loss has a KL term), the GRPO-family loss of the micro-batch, ``backward``; the log-probs come
  from ``learner.logprobs`` (chunked over the vocabulary, only at completion positions).
- ``step_denominators``: the loss's token and sequence counts over every micro-batch of every rank
  (``Normalizer``), so accumulation and sharding give the one-big-batch update.
- ``StepTotals``: sums of the loss parts and token counts, all-reduced once per ``train_step`` and
  turned into metrics (per-token means).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from learner.config import LossConfig
from learner.losses import LossParts, Normalizer, grpo_loss

Logprobs = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``logprobs(model, batch, entropy_grad=False) -> (logp, entropy)``, both ``(sequences, tokens)``."""


def on_device(batch: dict, device) -> dict:
    """The batch's tensors moved to ``device`` (other values as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def step_denominators(batches: list[dict], all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> Normalizer:
    """Tokens and sequences that count (loss mask > 0) in this optimizer step, summed over ranks."""
    local = torch.tensor([sum(float((b["loss_mask"] > 0).sum()) for b in batches),
                          sum(float((b["loss_mask"] > 0).any(-1).sum()) for b in batches)], dtype=torch.float64)
    tokens, sequences = all_reduce(local).tolist()
    return Normalizer(tokens=tokens, sequences=sequences)


def micro_batch_backward(model, ref_model, batch: dict, cfg: LossConfig, norm: Normalizer, logprobs: Logprobs,
                         grad_scale: float = 1.0) -> LossParts:
    """Loss of one micro-batch (already on the model's device) and its backward pass.

    ``batch["old_logprobs"]``, when present, are the proximal policy's (several optimizer steps on one
    batch); otherwise the current log-probs, detached, stand in. ``grad_scale`` multiplies the loss
    before ``backward`` (the world size: FSDP averages gradients over ranks).
    """
    logp, ent = logprobs(model, batch, entropy_grad=cfg.entropy_coef != 0)
    ref = None
    if ref_model is not None:
        with torch.no_grad():
            ref = logprobs(ref_model, batch)[0]
    parts = grpo_loss(cfg, logp, batch.get("old_logprobs", logp.detach()), batch["behaviour_logprobs"],
                      batch["advantages"], batch["loss_mask"], norm, ref_logprobs=ref, entropy=ent)
    (parts.loss * grad_scale).backward()
    return parts


@dataclass
class StepTotals:
    """Sums over a ``train_step`` (this rank's until :meth:`all_reduced`)."""

    loss: float = 0.0
    """Sum of the micro-batches' loss shares (each optimizer step's loss sums to its mean loss)."""
    policy: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_fraction: float = 0.0
    tis_weight: float = 0.0
    ratio: float = 0.0
    """Token sums of the loss parts, over tokens with loss mask > 0."""
    loss_tokens: float = 0.0
    """Tokens with loss mask > 0."""
    train_tokens: float = 0.0
    """Prompt + completion tokens through forward and backward (dummy micro-batches not counted)."""

    def add(self, parts: LossParts, batch: dict, real: bool = True) -> None:
        """Add one micro-batch's loss parts; ``real`` = False for a rank's empty (dummy) micro-batch."""
        self.loss += float(parts.loss.detach())
        self.policy += float(parts.policy)
        self.kl += float(parts.kl)
        self.entropy += float(parts.entropy)
        self.clip_fraction += float(parts.clip_fraction)
        self.tis_weight += float(parts.tis_mean)
        self.ratio += float(parts.ratio_mean)
        self.loss_tokens += float((batch["loss_mask"] > 0).sum())
        self.train_tokens += batch["n_tokens"] if real else 0

    def all_reduced(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> StepTotals:
        names = [f.name for f in fields(self)]
        summed = all_reduce(torch.tensor([getattr(self, n) for n in names], dtype=torch.float64)).tolist()
        return StepTotals(**dict(zip(names, summed)))

    def metrics(self, optimizer_steps: int) -> dict[str, Any]:
        """Per-token means of the loss parts; ``loss`` is the mean over optimizer steps."""
        tok = max(self.loss_tokens, 1.0)
        return {"loss": self.loss / optimizer_steps, "policy_loss": self.policy / tok, "kl": self.kl / tok,
                "entropy": self.entropy / tok, "clip_fraction": self.clip_fraction / tok,
                "tis_weight_mean": self.tis_weight / tok, "ratio_mean": self.ratio / tok,
                "loss_tokens": int(self.loss_tokens), "train_tokens": int(self.train_tokens)}
