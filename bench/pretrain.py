"""Benchmark: pretraining throughput with packing vs padding on the same documents.

    .venv/bin/python bench/pretrain.py [--docs 600] [--seq-len 256] [--batch 8] [--steps 15]

Both arms train the tiny model (forward + backward + AdamW) on the same stage-1 documents:
- packed: documents concatenated into full rows with intra-document masking (position resets);
- padded: one document per row, right-padded to the longest document of its batch (dynamic padding,
  the cheaper padding baseline) with an attention mask.
A third arm pads every row to ``seq_len`` (static shapes). The arms are interleaved step by step so
machine-load swings hit all alike. Printed: the share of non-padding tokens in each arm, real
(non-padding) tokens/s of each, and the ratios packed/padded. Timings depend on machine load; run it on a quiet machine and compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _real(b) -> int:
    return int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["real"].sum())


def _interleaved(arms: dict[str, list], steps: int) -> dict[str, tuple[float, int]]:
    """Train one model per arm; after each packed step, every other arm trains until it has seen as
    many real tokens. Interleaving spreads machine-load swings over all arms alike."""
    from pretraining.config import OptimConfig
    from pretraining.model import build_model
    from pretraining.optim import build_optimizer
    from pretraining.trainer import lm_loss

    vocab = int(max(int(b["input_ids"].max()) for bs in arms.values() for b in bs)) + 1
    state = {}
    for name, batches in arms.items():
        model = build_model("tiny", vocab, seed=0)
        opt = build_optimizer(model, OptimConfig(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1))
        lm_loss(model, batches[0])[0].backward()  # warm-up, not timed
        opt.zero_grad(set_to_none=True)
        state[name] = {"model": model, "opt": opt, "i": 1, "t": 0.0, "real": 0}

    def step(name):
        st, b = state[name], arms[name][state[name]["i"] % len(arms[name]) or 1]
        t0 = time.perf_counter()
        loss, _ = lm_loss(st["model"], b)
        loss.backward()
        st["opt"].step()
        st["opt"].zero_grad(set_to_none=True)
        st["t"] += time.perf_counter() - t0
        st["real"] += _real(b)
        st["i"] += 1

    for _ in range(steps):
        step("packed")
        for name in arms:
            while name != "packed" and state[name]["real"] < state["packed"]["real"]:
                step(name)
    return {name: (st["t"], st["real"]) for name, st in state.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    args = ap.parse_args()

    import torch

    from pretraining.data import mixture_documents
    from pretraining.packing import Row, collate, pack_stream, real_token_share
    from pretraining.pretrain import encode_documents
    from pretraining.tokenizer import train_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    mixture = {"problems": 0.5, "arithmetic_facts": 0.3, "counting": 0.1, "comparisons": 0.1}
    docs = mixture_documents(mixture, args.docs, seed=0)
    tok = train_tokenizer(docs, 512)
    ids = [d[: args.seq_len] for d in encode_documents(tok, docs)]
    pad = tok.pad_token_id

    packed_rows = pack_stream(ids, args.seq_len, pad)
    packed = []
    for i in range(0, len(packed_rows), args.batch):
        rows = packed_rows[i:i + args.batch]
        b = collate(rows, packed=True)
        b["real"] = torch.tensor([r.n_real for r in rows])
        packed.append(b)
    padded, padded_rows = [], []
    for i in range(0, len(ids), args.batch):
        chunk = ids[i:i + args.batch]
        longest = max(len(d) for d in chunk)
        rows = []
        for d in chunk:
            r = Row()
            r.add(d)
            rows.append(r.pad_to(longest, pad))
        padded_rows += [(Row(list(r.input_ids[:r.n_real]), list(r.position_ids[:r.n_real]), list(r.labels[:r.n_real]), r.n_real), args.seq_len) for r in rows]
        padded.append(collate(rows, packed=False))
    share_packed = real_token_share(packed_rows)
    share_padded_dynamic = sum(int(b["attention_mask"].sum()) for b in padded) / sum(b["input_ids"].numel() for b in padded)
    share_padded_fixed = sum(r.n_real for r, _ in padded_rows) / (len(padded_rows) * args.seq_len)

    fixed = [collate([r.pad_to(args.seq_len, pad) for r, _ in padded_rows[i:i + args.batch]], packed=False)
             for i in range(0, len(padded_rows), args.batch)]
    steps = min(args.steps, len(packed) - 1)
    timing = _interleaved({"packed": packed, "padded_dynamic": padded, "padded_to_seq_len": fixed}, steps)
    tps = {k: r / t for k, (t, r) in timing.items()}
    result = {
        "docs": len(ids), "seq_len": args.seq_len, "batch": args.batch, "threads": torch.get_num_threads(),
        "non_padding_share": {"packed": round(share_packed, 4), "padded_dynamic": round(share_padded_dynamic, 4),
                              "padded_to_seq_len": round(share_padded_fixed, 4)},
        "real_tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "packed_over_padded_dynamic": round(tps["packed"] / tps["padded_dynamic"], 3),
        "packed_over_padded_to_seq_len": round(tps["packed"] / tps["padded_to_seq_len"], 3),
        "load_avg_1min": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
