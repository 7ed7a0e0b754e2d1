"""The one training loop behind pretraining, SFT and DPO; only the objective differs.

Features: AdamW with no weight decay on embeddings and norms (``pretraining.optim``), WSD / cosine / constant schedules with
warmup, gradient accumulation (the loss is normalised by the step's total target count, across
micro-batches and ranks, so accumulation and FSDP2 match one big batch), global-norm clipping,
optional z-loss, tqdm progress with loss and tokens/s, JSONL metrics, and resumable checkpoints
(model + optimizer + scheduler + RNG + data position; batches are a pure function of the step).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

from pretraining.config import OptimConfig, ScheduleConfig
from pretraining.metrics import MetricsLogger
from pretraining.packing import IGNORE

log = logging.getLogger(__name__)

Objective = Callable[[Any, dict], tuple[Any, dict[str, float]]]
"""``objective(model, micro_batch) -> (loss_sum tensor, stats sums)``; the loop divides by the count."""


def lr_multiplier(schedule: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """LR factor at a step (0-based) for a run of ``total_steps`` optimizer steps."""
    warm = min(schedule.warmup_steps, max(total_steps - 1, 0))
    floor = schedule.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if schedule.kind == "constant":
            return 1.0
        if schedule.kind == "cosine":
            t = (step - warm) / max(total_steps - warm, 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        decay_steps = int(round(total_steps * schedule.decay_fraction))
        start = total_steps - decay_steps
        if step < start or decay_steps == 0:
            return 1.0
        t = (step - start + 1) / decay_steps
        return 1.0 - (1.0 - floor) * min(t, 1.0)

    return f


def lm_loss(model, batch: dict, z_loss: float = 0.0) -> tuple[Any, dict[str, float]]:
    """Summed next-token cross-entropy over targets (labels != -100), plus ``z_loss`` * sum(logsumexp^2)."""
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask")}
    logits = model(**inputs, use_cache=False).logits.float()
    labels = batch["labels"]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                         reduction="sum")
    stats = {"ce": ce.item()}
    loss = ce
    if z_loss > 0:
        lse = logits[labels != IGNORE].logsumexp(-1)
        z = (lse ** 2).sum()
        loss = loss + z_loss * z
        stats["z"] = z.item()
    return loss, stats


def lm_count(batch: dict) -> int:
    return int((batch["labels"] != IGNORE).sum())


class Trainer:
    """Holds model, optimizer and schedule for one run; :meth:`run` trains a range of steps."""

    def __init__(self, model, optim: OptimConfig, schedule: ScheduleConfig, total_steps: int, run_dir: str | Path,
                 metrics: MetricsLogger | None, *, objective: Objective, count: Callable[[dict], int],
                 dist=None, log_every: int = 10, name: str = "train"):
        import torch

        from pretraining.optim import build_optimizer

        self.model, self.optim_cfg, self.total_steps = model, optim, total_steps
        self.run_dir, self.metrics, self.dist, self.log_every, self.name = Path(run_dir), metrics, dist, log_every, name
        self.objective, self.count = objective, count
        self.optimizer = build_optimizer(model, optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(schedule, total_steps))
        self.step = 0
        self.history: list[dict[str, float]] = []

    @classmethod
    def for_run(cls, cfg, model, total_steps: int, *, objective: Objective, count: Callable[[dict], int],
                dist=None, name: str) -> "Trainer":
        """The trainer of one pretrain / SFT / DPO run (``cfg``: its config): metrics into ``cfg.out_dir`` on
        rank 0 (``trainer.metrics``), the run's optimizer and schedule, resumed there when ``cfg.resume``."""
        run_dir = Path(cfg.out_dir)
        rank0 = dist is None or dist.rank == 0
        metrics = MetricsLogger(run_dir, cfg.metrics.backends, wandb_project=cfg.metrics.wandb_project,
                                append=cfg.resume) if rank0 else None
        trainer = cls(model, cfg.optim, cfg.schedule, total_steps, run_dir, metrics, objective=objective, count=count,
                      dist=dist, log_every=cfg.metrics.log_every, name=name)
        if cfg.resume:
            trainer.resume_latest(run_dir)
        return trainer

    def saving_every(self, every: int, end: int, tokenizer, meta: dict | None = None) -> Callable[[int], None]:
        """An ``on_step`` for :meth:`run`: a resumable ``checkpoint-latest`` every ``every`` steps before step
        ``end`` (0: never), its data position the step."""
        def on_step(step: int) -> None:
            if every and step % every == 0 and step < end:
                self.save_resumable(self.run_dir / "checkpoint-latest", tokenizer, data_position=step,
                                    meta={"step": step, **(meta or {})})

        return on_step

    @property
    def world(self) -> int:
        return self.dist.world_size if self.dist else 1

    @property
    def sharded(self) -> bool:
        """FSDP2 is on (any world size, 1 included: one process on a GPU): parameters are DTensors."""
        return self.dist is not None

    def _all_sum(self, x: float) -> float:
        if self.world == 1:
            return x
        import torch
        import torch.distributed as td

        t = torch.tensor([float(x)], dtype=torch.float64)
        td.all_reduce(t)
        return float(t.item())

    def train_step(self, micro_batches: list[dict]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches."""
        import torch

        self.model.train()
        total = self._all_sum(sum(self.count(mb) for mb in micro_batches))
        if total <= 0:
            raise ValueError(f"step {self.step}: the batch has no targets to train on (every label is masked)")
        scale = self.world / total  # FSDP averages gradients over ranks
        loss_sum, stat_sums, tokens = 0.0, {}, 0
        for mb in micro_batches:
            loss, stats = self.objective(self.model, mb)
            (loss * scale).backward()
            loss_sum += loss.item()
            for k, v in stats.items():
                stat_sums[k] = stat_sums.get(k, 0.0) + v
            tokens += int(mb["attention_mask"].sum()) if "attention_mask" in mb else int(mb["input_ids"].numel())
        grad_norm = float("nan")
        if self.optim_cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        out = {"loss": self._all_sum(loss_sum) / total, "lr": lr, "grad_norm": grad_norm,
               "tokens": self._all_sum(tokens)}
        for k, v in stat_sums.items():
            out[k] = self._all_sum(v) / total
        return out

    def run(self, end_step: int, batches_at: Callable[[int], list[dict]], *, stage: str = "",
            on_step: Callable[[int], None] | None = None) -> list[dict[str, float]]:
        """Train from ``self.step`` up to ``end_step`` (exclusive); ``batches_at(step)`` gives this rank's
        micro-batches for a global step."""
        from tqdm import tqdm

        rank0 = self.dist is None or self.dist.rank == 0
        label = f"{self.name}{':' + stage if stage else ''}"
        bar = tqdm(total=end_step - self.step, desc=label, disable=not rank0, dynamic_ncols=True, leave=False)
        t0, tok_window = time.perf_counter(), 0.0
        out = []
        while self.step < end_step:
            rec = self.train_step(batches_at(self.step))
            dt = time.perf_counter() - t0
            tok_window += rec["tokens"]
            rec["tokens_per_s"] = tok_window / dt if dt > 0 else 0.0
            rec["stage"] = stage
            out.append(rec)
            self.history.append(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            if self.metrics is not None and rank0:
                self.metrics.log(self.step, {k: v for k, v in rec.items() if k != "stage"} | {"stage": stage})
            if rank0 and (self.step % self.log_every == 0 or self.step == end_step):
                log.info("%s step %d/%d loss %.4f lr %.2e grad_norm %.3f tok/s %.0f", label, self.step,
                         self.total_steps, rec["loss"], rec["lr"], rec["grad_norm"], rec["tokens_per_s"])
            if on_step is not None:
                on_step(self.step)
        bar.close()
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_resumable(self, path: str | Path, tokenizer, *, data_position: int, meta: dict | None = None) -> Path:
        """HF model folder + ``training_state.pt``. Under FSDP the optimizer state is gathered unsharded
        (keyed by parameter name) and rank 0 writes it, with rank 0's RNG state (ranks share the seed)."""
        from pretraining.checkpoint import save_training_state

        path = export_model(self.model, tokenizer, path, self.dist, meta)
        optim_state = self.optimizer
        if self.sharded:
            from pretraining.distributed import full_optimizer_state

            optim_state = full_optimizer_state(self.model, self.optimizer)
        if self.dist is None or self.dist.rank == 0:
            save_training_state(path, optimizer=optim_state, scheduler=self.scheduler, step=self.step,
                                data_position=data_position, extra={"history": self.history})
        if self.sharded:
            self.dist.barrier()
        return path

    def resume_latest(self, run_dir: Path) -> Path:
        """Load the newest resumable checkpoint under ``run_dir``; a clear error when there is none."""
        ck = latest_resumable(run_dir)
        if ck is None:
            raise FileNotFoundError(f"resume: no resumable checkpoint (training_state.pt) under {run_dir}")
        self.load_resumable(ck)
        log.info("resumed from %s at step %d", ck, self.step)
        return ck

    def load_resumable(self, path: str | Path) -> int:
        """Restore weights, optimizer, scheduler, RNG and step from ``path``; returns the data position."""
        from pretraining.checkpoint import load_training_state, read_hf_weights, set_rng_state

        state = read_hf_weights(path)
        ts = load_training_state(path)
        groups = ts["optimizer"].get("param_groups") or [{"params": []}]
        by_name = bool(groups[0]["params"]) and isinstance(groups[0]["params"][0], str)
        if by_name != self.sharded:
            saved_by = "an FSDP run (keyed by parameter name)" if by_name else "a plain process (keyed by index)"
            now = "FSDP" if self.sharded else "a plain process"
            raise ValueError(f"{path}: the optimizer state was saved by {saved_by} but this run uses {now}; resume "
                             f"with distributed.fsdp={'on' if by_name else 'off'} (FSDP is also on under torchrun "
                             f"and on a GPU)")
        if self.sharded:  # every rank reads the full state and keeps its shard
            from pretraining.distributed import load_full_state

            try:
                load_full_state(self.model, self.optimizer, state, ts["optimizer"])
            except (RuntimeError, KeyError) as e:
                raise ValueError(f"{path}: checkpoint does not match the model: {e}") from e
        else:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected or [m for m in missing if "lm_head" not in m]:
                raise ValueError(f"{path}: checkpoint does not match the model (missing {missing}, "
                                 f"unexpected {unexpected})")
            self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        set_rng_state(ts["rng"])
        self.step = int(ts["step"])
        self.history = list(ts["extra"].get("history", []))
        return int(ts["data_position"])


def export_model(model, tokenizer, path: str | Path, dist=None, meta: dict | None = None) -> Path:
    """Write an HF checkpoint; under FSDP every rank gathers the full state dict and rank 0 writes it."""
    from pretraining.checkpoint import save_checkpoint

    if dist is None:
        return save_checkpoint(model, tokenizer, path, meta)
    from pretraining.distributed import full_state_dict

    state = full_state_dict(model)
    if dist.rank == 0:
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_config(model.config)
        plain.load_state_dict(state, strict=False)
        plain.tie_weights()
        save_checkpoint(plain, tokenizer, path, meta)
    dist.barrier()
    return Path(path)


def latest_resumable(out_dir: Path) -> Path | None:
    """The resumable checkpoint with the highest step in ``out_dir`` (or None)."""
    from pretraining.checkpoint import TRAINING_STATE, read_meta

    found = [(read_meta(p.parent).get("step", -1), p.parent) for p in out_dir.glob(f"*/{TRAINING_STATE}")]
    return max(found)[1] if found else None
