"""Benchmark: pretraining throughput with packing vs padding on the same documents.

    .venv/bin/python bench/pretrain.py [--docs 600] [--seq-len 256] [--batch 8] [--steps 15]

Both arms train the tiny model (forward + backward + AdamW) on the same stage-1 documents:
- packed: documents concatenated into full rows with intra-document masking (position resets);
- padded: one document per row, right-padded to the longest document of its batch (dynamic padding,
  the cheaper padding baseline) with an attention mask.
Printed: the share of non-padding tokens in each arm, real (non-padding) tokens/s of each, and the
ratio packed/padded. Timings depend on machine load; run it on a quiet machine and compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _time_arm(model, batches, steps: int) -> tuple[float, int]:
    import torch

    from pretraining.config import OptimConfig
    from pretraining.trainer import lm_loss, param_groups

    opt = torch.optim.AdamW(param_groups(model, OptimConfig().weight_decay), lr=1e-3)
    lm_loss(model, batches[0])[0].backward()  # warm-up step, not timed
    opt.zero_grad(set_to_none=True)
    real, t0 = 0, time.perf_counter()
    for b in batches[1:steps + 1]:
        loss, _ = lm_loss(model, b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        real += int(b["attention_mask"].sum()) if "attention_mask" in b else int((b["real"]).sum())
    return time.perf_counter() - t0, real


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
    from pretraining.model import build_model
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
        padded_rows += [(r, args.seq_len) for r in rows]
        padded.append(collate(rows, packed=False))
    share_packed = real_token_share(packed_rows)
    share_padded_dynamic = sum(r.n_real for r, _ in padded_rows) / sum(len(r.input_ids) for r, _ in padded_rows)
    share_padded_fixed = sum(r.n_real for r, _ in padded_rows) / (len(padded_rows) * args.seq_len)

    steps = min(args.steps, len(packed) - 1)
    # the padded arm gets the same number of real tokens to chew through
    model = build_model("tiny", len(tok), seed=0)
    t_packed, real_packed = _time_arm(model, packed, steps)
    need, n = real_packed, 1
    while n < len(padded) and sum(int(b["attention_mask"].sum()) for b in padded[1:n + 1]) < need:
        n += 1
    model = build_model("tiny", len(tok), seed=0)
    t_padded, real_padded = _time_arm(model, padded, n)

    result = {
        "docs": len(ids), "seq_len": args.seq_len, "batch": args.batch, "threads": torch.get_num_threads(),
        "non_padding_share": {"packed": round(share_packed, 4), "padded_dynamic": round(share_padded_dynamic, 4),
                              "padded_to_seq_len": round(share_padded_fixed, 4)},
        "real_tokens_per_s": {"packed": round(real_packed / t_packed, 1), "padded_dynamic": round(real_padded / t_padded, 1)},
        "packed_over_padded": round((real_packed / t_packed) / (real_padded / t_padded), 3),
        "load_avg_1min": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
