"""``flywheel pretrain``: tokenizer, then multi-stage pretraining with packed, document-masked rows.

Stages run in order (stage 1 a broad mixture, stage 2 a reasoning-heavy one) under one LR schedule
(WSD by default, so the decay lands in the last stage). Each stage ends with an HF checkpoint plus
resumable training state in ``out_dir/stage-<i>-<name>``; ``out_dir/final`` is the export the next
step (SFT) starts from. Rows are a pure function of (seed, stage, step), so resuming replays the
exact data order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pretraining.config import PretrainConfig

log = logging.getLogger(__name__)


def tokenizer_for(cfg: PretrainConfig, run_dir: Path):
    """Load ``cfg.tokenizer.path`` or train a BPE on stage-1 documents plus chat-formatted examples."""
    from pretraining.data import mixture_documents, sft_conversations
    from pretraining.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    if cfg.tokenizer.path:
        return load_tokenizer(cfg.tokenizer.path)
    saved = run_dir / "tokenizer"
    if cfg.resume and (saved / "tokenizer.json").is_file():
        return load_tokenizer(saved)
    first = cfg.stages[0]
    docs = mixture_documents(first.mixture, cfg.tokenizer.train_docs, cfg.seed + 7, first.difficulties)
    chats = [f"<|im_start|>user\n{c[0]['content']}<|im_end|>\n<|im_start|>assistant\n{c[1]['content']}<|im_end|>"
             for c in sft_conversations(max(cfg.tokenizer.train_docs // 10, 10), cfg.seed + 8, [1, 2, 3, 4, 5])]
    tok = train_tokenizer(docs + chats, cfg.tokenizer.vocab_size)
    save_tokenizer(tok, saved)
    log.info("trained a %d-token byte-level BPE on %d documents -> %s", len(tok), len(docs) + len(chats), saved)
    return tok


def encode_documents(tokenizer, docs: list[str]) -> list[list[int]]:
    """Token ids of each document followed by ``<|endoftext|>``."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return [ids + [eot] for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]]


def stage_rows(cfg: PretrainConfig, stage_index: int, tokenizer, n_rows: int) -> list:
    """At least ``n_rows`` packed (or padded) rows for one stage, deterministic in (seed, stage)."""
    from pretraining.data import mixture_documents
    from pretraining.packing import pack_stream, pad_rows

    stage = cfg.stages[stage_index]
    rows: list = []
    rnd = 0
    while len(rows) < n_rows:
        docs = mixture_documents(stage.mixture, 2000, cfg.seed * 1000 + stage_index * 100 + rnd, stage.difficulties)
        ids = encode_documents(tokenizer, docs)
        if cfg.packing:
            rows += pack_stream(ids, cfg.seq_len, tokenizer.pad_token_id)
        else:
            ids = [d[: cfg.seq_len] for d in ids]  # padding baseline: one (truncated) document per row
            rows += pad_rows([(d, None) for d in ids], cfg.seq_len, tokenizer.pad_token_id)
        rnd += 1
        if rnd > 1000:
            raise RuntimeError(f"stage {stage.name}: could not build {n_rows} rows")
    return rows[:n_rows]


def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train; returns ``{"final": path, "stages": [paths], "history": [...], "seconds": s}``."""
    import torch

    from pretraining.distributed import close_distributed, init_distributed, shard_model
    from pretraining.metrics import plot_loss_curves
    from pretraining.model import build_model, count_parameters
    from pretraining.packing import collate
    from pretraining.trainer import Trainer, lm_count, lm_loss

    t0 = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dist = init_distributed(cfg.distributed)
    rank0 = dist is None or dist.rank == 0
    world = dist.world_size if dist else 1
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_for(cfg, run_dir) if rank0 or cfg.tokenizer.path else None
    if dist is not None and not cfg.tokenizer.path:
        dist.barrier()
        from pretraining.tokenizer import load_tokenizer

        tok = tok or load_tokenizer(run_dir / "tokenizer")
    model = build_model(cfg.model.size, len(tok), seed=cfg.seed, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    device = dist.device if dist else "cpu"
    if rank0:
        log.info("model %s: %.2fM parameters, vocab %d, seq_len %d, on %s%s, %d rank(s)", cfg.model.size,
                 count_parameters(model) / 1e6, len(tok), cfg.seq_len, device,
                 " (bf16 compute)" if dist and dist.bf16 else "", world)
    if cfg.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"seq_len={cfg.seq_len} is longer than the model's context "
                         f"({model.config.max_position_embeddings}) for size {cfg.model.size!r}")
    if dist is not None:
        shard_model(model, dist)

    per_step = cfg.batch_size * cfg.grad_accum * world
    bounds = [0]
    for s in cfg.stages:
        bounds.append(bounds[-1] + s.steps)
    total = bounds[-1]
    trainer = Trainer.for_run(cfg, model, total, objective=lambda m, b: lm_loss(m, b, cfg.z_loss), count=lm_count,
                              dist=dist, name="pretrain")

    stage_paths = []
    for i, stage in enumerate(cfg.stages):
        start, end = bounds[i], bounds[i + 1]
        path = run_dir / f"stage-{i + 1}-{stage.name}"
        stage_paths.append(str(path))
        if trainer.step >= end:
            continue
        rows = stage_rows(cfg, i, tok, stage.steps * per_step)

        def batches_at(step: int, rows=rows, start=start) -> list[dict]:
            chunk = rows[(step - start) * per_step: (step - start + 1) * per_step]
            mine = dist.shard(chunk) if dist else chunk
            out = []
            for a in range(cfg.grad_accum):
                mb = collate(mine[a * cfg.batch_size:(a + 1) * cfg.batch_size], cfg.packing)
                out.append({k: v.to(device) for k, v in mb.items()})
            return out

        if rank0:
            log.info("stage %d/%d %r: steps %d-%d, mixture %s", i + 1, len(cfg.stages), stage.name, start, end,
                     stage.mixture)
        trainer.run(end, batches_at, stage=stage.name,
                    on_step=trainer.saving_every(cfg.save_every, end, tok, {"stage": stage.name}))
        trainer.save_resumable(path, tok, data_position=end, meta={"step": end, "stage": stage.name, "job": "pretrain"})

    from pretraining.trainer import export_model

    final = export_model(model, tok, run_dir / "final", dist, meta={"step": trainer.step, "job": "pretrain",
                                                                     "size": cfg.model.size})
    if trainer.metrics is not None:
        trainer.metrics.close()
        plot_loss_curves(trainer.metrics.path, run_dir / "loss.png", title="pretraining loss")
    close_distributed(dist)
    return {"final": str(final), "stages": stage_paths, "history": trainer.history, "device": device,
            "seconds": time.perf_counter() - t0}


def main(cfg: PretrainConfig) -> int:
    out = run_pretrain(cfg)
    print(f"pretraining done in {out['seconds']:.0f}s: {out['final']} (final loss "
          f"{out['history'][-1]['loss'] if out['history'] else float('nan'):.4f})", flush=True)
    if cfg.eval_n:
        from pretraining.evaluate import report_greedy

        report_greedy(out['final'], cfg.eval_n, "base")
    return 0
