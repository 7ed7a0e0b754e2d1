"""Measure learner training throughput (tokens/s) on a random Qwen3 of a chosen size, one rank in-process.

    python -m learner.throughput --device cpu --hidden 64 --layers 2 --seq 128 --batch 16
    python -m learner.throughput --device cuda --hidden 1024 --layers 16 --vocab 32768 --seq 1024 --batch 32

Prints one line per step and the median tokens/s (prompt + completion tokens through forward and
backward) and the time to gather the full state dict for weight publishing. Speed numbers only: the
model is random and the rewards are noise.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time


def random_groups(n_groups: int, group_size: int, seq: int, vocab: int, seed: int) -> list[dict]:
    from rollout.trajectory import Group, Sample

    rng = random.Random(seed)
    prompt_len = max(seq // 4, 1)
    out = []
    for g in range(n_groups):
        samples = [Sample(completion_token_ids=[rng.randrange(3, vocab) for _ in range(seq - prompt_len)],
                          logprobs=[-5.0] * (seq - prompt_len), versions=[0] * (seq - prompt_len),
                          finish_reason="length", reward=float(i % 2)) for i in range(group_size)]
        out.append(Group(group_id=f"g{g}", prompt_token_ids=[rng.randrange(3, vocab) for _ in range(prompt_len)],
                         samples=samples).to_dict())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=0, help="attention heads (default hidden/64, at least 2)")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence (1/4 prompt)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per optimizer step")
    ap.add_argument("--micro", type=int, default=8, help="micro-batch size")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--activation-checkpointing", action="store_true")
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from learner.actor import LearnerWorker, free_port
    from learner.config import LearnerConfig, LossConfig

    heads = args.heads or max(2, args.hidden // 64)
    cfg = Qwen3Config(hidden_size=args.hidden, num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=args.hidden // heads, num_hidden_layers=args.layers, intermediate_size=3 * args.hidden,
                      vocab_size=args.vocab, tie_word_embeddings=True, max_position_embeddings=max(args.seq, 512))
    with tempfile.TemporaryDirectory() as d:
        Qwen3ForCausalLM(cfg).save_pretrained(d)
        backend = "cpu:gloo,cuda:nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        lc = LearnerConfig(device=args.device, micro_batch_size=args.micro, lr=1e-5,
                           grad_accumulation=max(1, args.batch // args.micro),
                           activation_checkpointing=args.activation_checkpointing)
        w = LearnerWorker(lc, LossConfig(max_staleness=None), d, rank=0)
        info = w.setup("127.0.0.1", 0)
        print(f"model: {info['parameters'] / 1e6:.1f}M parameters on {info['device']}, seq {args.seq}, "
              f"batch {args.batch}, micro {args.micro}, threads {torch.get_num_threads()}")
        rates = []
        for step in range(args.steps):
            m = w.train_step(random_groups(max(1, args.batch // 8), min(8, args.batch), args.seq, args.vocab, step))
            rates.append(m["train_tokens_per_s"])
            print(f"step {step}: {m['train_tokens']} tokens in {m['train_step_s']:.2f}s = "
                  f"{m['train_tokens_per_s']:.0f} tokens/s, loss {m['loss']:+.4f}, grad norm {m['grad_norm']:.3f}")
        t0 = time.perf_counter()
        w.full_state_dict()
        gather = time.perf_counter() - t0
        print(f"median tokens/s (steps 2..): {statistics.median(rates[1:] or rates):.0f}; "
              f"full state dict gather {gather:.3f}s")
        if args.device == "cuda":
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
