"""AdamW from an ``OptimConfig``, for the pretraining trainers and the GRPO learner alike.

Parameter groups: one per learning-rate multiplier (``lr_scale``: fnmatch patterns over parameter names,
the first match wins, every pattern must match), each cut in two: matrices with ``weight_decay``;
embeddings, the output head, norms and biases without. Every group carries its ``lr_scale``, kept in the
optimizer state, so a per-stage LR change (``set_base_lr``) keeps the multipliers.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pretraining.config import OptimConfig


def decays(name: str, p) -> bool:
    """Weight decay applies to this parameter: a matrix that is not an embedding, head or norm."""
    return p.ndim >= 2 and not any(part in name for part in ("embed", "lm_head", "norm"))


def param_groups(named_parameters, optim: OptimConfig) -> list[dict]:
    """AdamW parameter groups (lists of parameters with ``lr``, ``lr_scale``, ``weight_decay``); empty
    groups are left out. The base-lr group without multiplier comes first (its ``lr`` is the one reported)."""
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    patterns = list(optim.lr_scale)
    buckets: dict[str | None, list] = {None: [], **{pat: [] for pat in patterns}}
    for name, p in named:
        buckets[next((pat for pat in patterns if fnmatchcase(name, pat)), None)].append((name, p))
    unmatched = [pat for pat in patterns if not buckets[pat]]
    if unmatched:
        sample = ", ".join(n for n, _ in named[:6])
        raise ValueError(f"optim.lr_scale: pattern(s) {unmatched} match no parameter (names look like: {sample}, ...)")
    groups = []
    for pat, members in buckets.items():
        scale = 1.0 if pat is None else float(optim.lr_scale[pat])
        for wd, params in ((optim.weight_decay, [p for n, p in members if decays(n, p)]),
                           (0.0, [p for n, p in members if not decays(n, p)])):
            if params:
                groups.append({"params": params, "lr": optim.lr * scale, "lr_scale": scale, "weight_decay": wd})
    return groups


def build_optimizer(model, optim: OptimConfig):
    """``torch.optim.AdamW`` over ``model``'s trainable parameters (see :func:`param_groups`)."""
    import torch

    return torch.optim.AdamW(param_groups(model.named_parameters(), optim), lr=optim.lr, betas=tuple(optim.betas),
                             eps=optim.eps, weight_decay=optim.weight_decay)


def set_base_lr(optimizer, scheduler, lr: float) -> None:
    """Change the peak LR of a running optimizer (e.g. per GRPO stage): every group's base becomes
    ``lr * lr_scale`` and its current LR keeps the schedule's factor."""
    new_bases = [lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    for g, base, new in zip(optimizer.param_groups, scheduler.base_lrs, new_bases):
        g["lr"] = g["lr"] / base * new if base else new
    scheduler.base_lrs = new_bases
