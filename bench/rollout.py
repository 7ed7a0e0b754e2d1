"""Benchmark: rollout throughput and in-flight weight sync on one tiny checkpoint and one prompt set.

    .venv/bin/python bench/rollout.py                      # builds a tiny random Qwen3 in /tmp
    .venv/bin/python bench/rollout.py --model runs/demo/sft/final --prompts 32 --n 4 --max-tokens 64

Measures, one after another on the same machine (never two engines at once):

- (a) our ``RolloutWorker`` (Ray actor, AsyncLLM, per-token versions and logprobs) ``generate``;
- (b) bare vLLM ``LLM.generate`` in this process, same engine settings and sampling;
- (c) transformers ``generate`` (batched, sampling, same number of sequences and new tokens);
- (a) again while a thread pushes a new weight version every ``--update-every`` seconds: sync
  latency (whole update) and generation stall (engine paused) per update, and tokens/s vs none.

Tokens/s counts completion tokens actually produced (a sample may stop early at EOS) over the
wall time of the call, best of ``--repeats``. Prints a markdown table and the ratios against the
targets (a >= 0.9 b; a >= 1.5 c on CPU; stall < 100 ms on the tiny model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_prompts(tokenizer, k: int) -> list[dict]:
    from rollout.tiny_checkpoint import synthetic_corpus

    texts = [t.split(" Answer:")[0] for t in synthetic_corpus(k, seed=123)]
    return [{"prompt_id": f"b{i}", "prompt_token_ids": tokenizer(t)["input_ids"]} for i, t in enumerate(texts)]


def count_tokens(groups: list[dict]) -> int:
    return sum(len(s["completion_token_ids"]) for g in groups for s in g["samples"])


class WorkerContender:
    """(a): one RolloutWorker actor; plain runs and runs with a weight update every k seconds."""

    def __init__(self, cfg, weights) -> None:
        import ray

        from rollout.worker import create_workers

        [self.w] = create_workers(cfg, name_prefix="bench")
        self.ref = ray.put(weights)
        self.version = ray.get(self.w.get_version.remote())
        self.syncs: list[dict] = []

    def run(self, prompts, sampling, update_every: float | None = None) -> tuple[float, list[dict]]:
        import ray

        stop = threading.Event()

        def updater() -> None:
            while not stop.wait(update_every):
                self.version += 1
                self.syncs.append(ray.get(self.w.load_weights.remote(self.version, self.ref)))

        th = threading.Thread(target=updater, daemon=True) if update_every else None
        if th:
            th.start()
        t0 = time.perf_counter()
        groups = ray.get(self.w.generate.remote(prompts, sampling))
        dt = time.perf_counter() - t0
        stop.set()
        if th:
            th.join()
        return count_tokens(groups) / dt, groups

    def close(self) -> None:
        import ray

        ray.get(self.w.shutdown.remote())
        ray.kill(self.w)


class VLLMContender:
    """(b): bare vLLM ``LLM.generate`` in this process, same engine settings and sampling."""

    def __init__(self, cfg, sampling) -> None:
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len, enforce_eager=True,
                       seed=0, disable_log_stats=True)
        self.sp = SamplingParams(n=sampling["n"], temperature=sampling["temperature"], top_p=sampling["top_p"],
                                 max_tokens=sampling["max_tokens"], logprobs=0)

    def run(self, prompts) -> float:
        inputs = [{"prompt_token_ids": p["prompt_token_ids"]} for p in prompts]
        t0 = time.perf_counter()
        outs = self.llm.generate(inputs, self.sp, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / (time.perf_counter() - t0)

    def close(self) -> None:
        import gc

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()


def bench_hf(args, cfg, prompts, sampling) -> float:
    """(c): transformers ``generate``, batched, sampling, same sequences and new tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).eval()
    pad = tok.pad_token_id
    seqs = [p["prompt_token_ids"] for p in prompts for _ in range(sampling["n"])]
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])  # left padding
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(s) for s in seqs])[:, None]).long()
    best = 0.0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 max_new_tokens=sampling["max_tokens"], pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)
        new = out[:, width:]
        # tokens up to and including the first EOS count (as vLLM counts them)
        eos = (new == tok.eos_token_id).int()
        after = (eos.cumsum(1) - eos) > 0
        tokens = int((~after).sum())
        best = max(best, tokens / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: build a tiny random Qwen3)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--update-every", type=float, default=0.5, help="seconds between weight updates")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every contender")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray
    import torch
    from transformers import AutoTokenizer

    from rollout.config import RolloutConfig
    from rollout.tiny_checkpoint import build_tiny_qwen3, perturbed_state_dict

    torch.set_num_threads(args.threads)
    model = args.model or str(build_tiny_qwen3(Path("/tmp") / f"flywheel-bench-rollout-{os.getpid()}"))
    cfg = RolloutConfig(model=model, dtype="float32", max_model_len=1024, num_cpus_per_worker=args.threads)
    prompts = make_prompts(AutoTokenizer.from_pretrained(model), args.prompts)
    sampling = {"n": args.n, "max_tokens": args.max_tokens, "temperature": 1.0, "top_p": 1.0}
    weights = perturbed_state_dict(model, scale=0.01)

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
    # Both engines stay up (idle engines cost no CPU) and the runs alternate a, b, a+updates, so
    # load from other processes on a shared machine hits every contender alike.
    wa = WorkerContender(cfg, weights)
    wa.run(prompts, sampling)  # warm-up: one full run each
    vb = VLLMContender(cfg, sampling)
    vb.run(prompts)
    tps_a, tps_b, tps_u, straddled, samples = [], [], [], 0, 0
    for _ in range(args.repeats):
        tps_a.append(wa.run(prompts, sampling)[0])
        tps_b.append(vb.run(prompts))
        tps, groups = wa.run(prompts, sampling, update_every=args.update_every)
        tps_u.append(tps)
        straddled = sum(1 for g in groups for s in g["samples"] if len(set(s["versions"])) > 1)
        samples = sum(len(g["samples"]) for g in groups)
    vb.close()
    wa.close()
    ray.shutdown()
    c = bench_hf(args, cfg, prompts, sampling)
    a = {"tps": max(tps_a), "tps_updates": max(tps_u), "syncs": wa.syncs, "straddled": straddled,
         "samples": samples}
    b = max(tps_b)
    paired = [x / y for x, y in zip(tps_a, tps_b)]
    print("per-repeat tokens/s  a:", [round(x) for x in tps_a], " b:", [round(x) for x in tps_b], " a+updates:",
          [round(x) for x in tps_u], " a/b per repeat:", [round(r, 2) for r in paired])

    syncs = a["syncs"]
    sync_ms = [1000 * s["sync_s"] for s in syncs]
    stall_ms = [1000 * s["stall_s"] for s in syncs]
    pause_ms = [1000 * s["pause_s"] for s in syncs]
    reload_ms = [1000 * s["reload_s"] for s in syncs]
    res = {"a_over_b_per_repeat": paired, "tokens_per_s": {"worker": a["tps"], "vllm": b, "transformers": c, "worker_with_updates": a["tps_updates"]},
           "updates": len(syncs), "sync_ms_median": statistics.median(sync_ms) if syncs else None,
           "sync_ms_max": max(sync_ms, default=None), "stall_ms_median": statistics.median(stall_ms) if syncs else None,
           "stall_ms_max": max(stall_ms, default=None),
           "pause_ms_median": statistics.median(pause_ms) if syncs else None,
           "reload_ms_median": statistics.median(reload_ms) if syncs else None, "samples_straddling_an_update": a["straddled"],
           "workload": f"{args.prompts} prompts x n={args.n} x {args.max_tokens} tokens, {args.threads} threads"}
    print(f"\nworkload: {res['workload']} ({model})\n")
    print("| measurement | value |\n| --- | --- |")
    print(f"| (a) RolloutWorker tokens/s | {a['tps']:.0f} |")
    print(f"| (b) bare vLLM `LLM.generate` tokens/s | {b:.0f} |")
    print(f"| (c) transformers `generate` tokens/s | {c:.0f} |")
    print(f"| (a) / (b) (target >= 0.9), best of each / median of paired repeats | {a['tps'] / b:.2f} / "
          f"{statistics.median(paired):.2f} |")
    print(f"| (a) / (c) (target >= 1.5) | {a['tps'] / c:.2f} |")
    print(f"| (a) with an update every {args.update_every:g} s, tokens/s | {a['tps_updates']:.0f} "
          f"({a['tps_updates'] / a['tps']:.2f} x no updates) |")
    if syncs:
        print(f"| updates during generation | {len(syncs)} ({a['straddled']}/{a['samples']} samples straddle one) |")
        print(f"| weight-sync latency per update, median / max | {res['sync_ms_median']:.1f} / {res['sync_ms_max']:.1f} ms |")
        print(f"| generation stall per update, median / max (target < 100 ms) | {res['stall_ms_median']:.1f} / "
              f"{res['stall_ms_max']:.1f} ms |")
        print(f"| stall parts, median: waiting for the running step / reloading weights | "
              f"{res['pause_ms_median']:.1f} / {res['reload_ms_median']:.1f} ms |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
