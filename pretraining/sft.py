"""``flywheel sft``: supervised fine-tuning on chat data, loss on assistant tokens only.

Conversations (the synthetic train split, or ``data_file`` rows in TRL's ``messages`` format) are
rendered with the checkpoint's own chat template; the assistant-token mask comes from the template
itself (:func:`pretraining.chat.encode_conversation`: no ``{% generation %}`` markers needed), so
system and user turns and role headers carry no loss. Sequences are packed with best-fit-decreasing (none is split; positions restart per sequence so
attention stays inside it) and the packed rows are reshuffled every epoch.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Callable

from pretraining.config import SFTConfig

log = logging.getLogger(__name__)


def sft_conversations(cfg: SFTConfig) -> tuple[str, list[list[dict[str, str]]]]:
    """``(source, conversations)``: ``cfg.data_file``'s (TRL ``messages`` rows) or the synthetic train split's,
    the synthetic questions shaped by ``prompt_template``; ``system_prompt`` leads any conversation
    without a system message."""
    from pretraining.chat import prompt_messages
    from pretraining.data import sft_conversations as synthetic
    from pretraining.dataset_files import read_conversations

    if cfg.data_file:
        source, convs = cfg.data_file, read_conversations(cfg.data_file, cfg.messages_field)
        if cfg.system_prompt:
            convs = [c if c[0]["role"] == "system" else [{"role": "system", "content": cfg.system_prompt}, *c]
                     for c in convs]
        return source, convs
    convs = [prompt_messages(c[0]["content"], cfg.system_prompt, cfg.prompt_template) + c[1:]
             for c in synthetic(cfg.n_examples, cfg.seed, cfg.difficulties)]
    return "synthetic train split", convs


def sft_rows(cfg: SFTConfig, tokenizer) -> list:
    """Packed (best-fit-decreasing) or padded rows of the SFT conversations, rendered with the checkpoint's
    own chat template; a conversation the template cannot mask or longer than ``seq_len`` is an error
    naming its source and row."""
    from pretraining.chat import ChatTemplateError, encode_conversation
    from pretraining.dataset_files import DataFileError
    from pretraining.packing import pack_best_fit, pad_rows
    from pretraining.tokenizer import pad_token_id

    source, convs = sft_conversations(cfg)
    if not convs:
        raise ValueError("SFT dataset is empty (n_examples=0?)")
    seqs = []
    for i, conv in enumerate(convs):
        try:
            ids, mask = encode_conversation(tokenizer, conv)
        except ChatTemplateError:
            raise
        except ValueError as e:
            raise DataFileError(f"{source}: row {i}: {e}") from None
        if len(ids) > cfg.seq_len:
            raise DataFileError(f"{source}: row {i}: the conversation has {len(ids)} tokens, longer than "
                                f"seq_len={cfg.seq_len}; raise seq_len or drop the row")
        seqs.append((ids, mask))
    return (pack_best_fit if cfg.packing else pad_rows)(seqs, cfg.seq_len, pad_token_id(tokenizer))


def epoch_batches(rows: list, rows_per_step: int, epochs: int, seed: int, dist, micro: int, packed: bool,
                  device: str = "cpu") -> tuple[int, Callable[[int], list[dict]]]:
    """``(total_steps, batches_at)`` for a row list visited ``epochs`` times, reshuffled per epoch."""
    from pretraining.packing import collate

    per_epoch = max(len(rows) // rows_per_step, 1)
    if len(rows) < rows_per_step:
        log.warning("only %d rows for a step of %d: every step reuses all rows", len(rows), rows_per_step)
    orders: dict[int, list[int]] = {}

    def order(epoch: int) -> list[int]:
        if epoch not in orders:
            idx = list(range(len(rows)))
            random.Random(seed * 7919 + epoch).shuffle(idx)
            orders[epoch] = idx
        return orders[epoch]

    def batches_at(step: int) -> list[dict]:
        epoch, j = divmod(step, per_epoch)
        idx = order(epoch)[j * rows_per_step:(j + 1) * rows_per_step]
        chunk = [rows[i] for i in idx]
        mine = dist.shard(chunk) if dist else chunk
        return [{k: v.to(device) for k, v in collate(mine[a:a + micro], packed).items()}
                for a in range(0, len(mine), micro)]

    return per_epoch * epochs, batches_at


def run_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.init_from``; returns ``{"final", "history", "seconds", "rows", "real_token_share"}``."""
    import torch

    from pretraining.checkpoint import load_checkpoint
    from pretraining.distributed import close_distributed, init_distributed, shard_model
    from pretraining.metrics import plot_loss_curves
    from pretraining.packing import real_token_share
    from pretraining.trainer import Trainer, export_model, lm_count, lm_loss

    t0 = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model, tok = load_checkpoint(cfg.init_from)
    if cfg.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model context {model.config.max_position_embeddings}")
    rows = sft_rows(cfg, tok)
    dist = init_distributed(cfg.distributed)
    rank0 = dist is None or dist.rank == 0
    if dist is not None:
        shard_model(model, dist)
    world = dist.world_size if dist else 1
    total, batches_at = epoch_batches(rows, cfg.batch_size * cfg.grad_accum * world, cfg.epochs, cfg.seed,
                                      dist, cfg.batch_size, cfg.packing, dist.device if dist else "cpu")
    run_dir = Path(cfg.out_dir)
    share = real_token_share(rows)
    if rank0:
        log.info("SFT: %s -> %d rows of %d (%.1f%% real tokens), %d epochs = %d steps",
                 cfg.data_file or f"{cfg.n_examples} synthetic conversations", len(rows), cfg.seq_len, 100 * share, cfg.epochs, total)
    trainer = Trainer.for_run(cfg, model, total, objective=lambda m, b: lm_loss(m, b, cfg.z_loss), count=lm_count,
                              dist=dist, name="sft")
    trainer.run(total, batches_at, stage="sft", on_step=trainer.saving_every(cfg.save_every, total, tok))
    final = export_model(model, tok, run_dir / "final", dist, meta={"step": total, "job": "sft",
                                                                     "init_from": cfg.init_from})
    if trainer.metrics is not None:
        trainer.metrics.close()
        plot_loss_curves(trainer.metrics.path, run_dir / "loss.png", title="SFT loss (assistant tokens)")
    close_distributed(dist)
    return {"final": str(final), "history": trainer.history, "seconds": time.perf_counter() - t0,
            "rows": len(rows), "real_token_share": share}


def main(cfg: SFTConfig) -> int:
    out = run_sft(cfg)
    print(f"SFT done in {out['seconds']:.0f}s: {out['final']} (final loss {out['history'][-1]['loss']:.4f})",
          flush=True)
    if cfg.eval_n:
        from pretraining.evaluate import report_greedy

        report_greedy(out['final'], cfg.eval_n, "SFT")
    return 0

