"""Benchmark: the learner's training step, memory and speed, before/after chunked log-probs and packing.

    python bench/learner.py memory                       # 152k vocab, 1k / 4k / 16k-token responses
    python bench/learner.py memory --cases 4096x2 --budget 8192 --variants after
    python bench/learner.py memory --device cuda --hidden 1024 --layers 4 --cases 4096x2 16384x2 32768x1
    python bench/learner.py default                      # the embedded default: tokens/s before vs after
    python bench/learner.py throughput --device cuda --hidden 1024 --layers 16 --vocab 32768 --seq 1024 --batch 32

``before`` is the learner's loss path as it was: right-padded micro-batches of ``micro_batch_size``
sequences, the whole ``[batch, tokens, vocab]`` logits in float32, a log-softmax for the log-probs and a
second one for the entropy at every position (the attention implementation is the learner's current
one in both). ``after`` is the learner as it is (``learner.logprobs``:
lm_head + log-softmax per chunk at completion positions only, recomputed in backward; padding-free
micro-batches cut by ``max_tokens_per_micro_batch``).

``memory``: ``train_step`` (forward, loss, backward, AdamW step; twice, tokens/s of the second) on a random Qwen2 (transformers'
``Qwen2Config``; Qwen2.5's 151,936-token vocabulary by default) per case ``RESPONSExSEQUENCES`` (64-token
prompts; micro-batch budget = all the case's tokens, so one micro-batch, unless ``--budget`` sets
``max_tokens_per_micro_batch``), each in a fresh process: peak
memory above the memory before the step (CPU: the process's peak RSS, reset through
``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``) and tokens/s. A case whose estimated need
exceeds the memory available (keeping ``--reserve-gib`` free) is skipped and says so.
``default``: ``train_step`` tokens/s of the embedded default's learner (tiny Qwen3, 512 vocab, 16 prompts
x 8 samples, micro-batches of 16, one thread as the job's learner rank has) before and after, steps
interleaved; tokens per CPU-second too, which other load on the machine disturbs less. ``throughput``: tokens/s of the
learner as it is on a random Qwen3 of a chosen size (and the full state-dict gather used to publish
weights). Speed numbers only: models are random and rewards are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30
PROMPT = 64


def random_groups(n_groups: int, group_size: int, prompt_len: int, completion_len, vocab: int, seed: int) -> list[dict]:
    """Groups of random tokens; ``completion_len`` is an int or a (low, high) range."""
    from rollout.trajectory import Group, Sample

    rng = random.Random(seed)
    out = []
    for g in range(n_groups):
        samples = []
        for i in range(group_size):
            n = completion_len if isinstance(completion_len, int) else rng.randint(*completion_len)
            samples.append(Sample(completion_token_ids=[rng.randrange(3, vocab) for _ in range(n)],
                                  logprobs=[-5.0] * n, versions=[0] * n, finish_reason="length", reward=float(i % 2)))
        out.append(Group(group_id=f"g{seed}-{g}", prompt_token_ids=[rng.randrange(3, vocab) for _ in range(prompt_len)],
                         samples=samples).to_dict())
    return out


def before_worker_class():
    """``LearnerWorker`` with the loss path it had before chunking (full logits, two log-softmaxes)."""
    import torch

    from learner.actor import LearnerWorker
    from learner.losses import token_entropy, token_logprobs

    class FullLogitsWorker(LearnerWorker):
        def _logprobs(self, model, batch, entropy_grad=False):
            ids = batch["input_ids"]
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
            if self.loss_cfg.temperature != 1.0:
                logits = logits / self.loss_cfg.temperature
            logp = token_logprobs(logits, ids[:, 1:])
            if entropy_grad:
                ent = token_entropy(logits)
            else:
                with torch.no_grad():
                    ent = token_entropy(logits.detach())
            rows, cols = batch["positions"] // ids.shape[1], batch["positions"] % ids.shape[1]
            m = batch["completion_mask"]
            return (logp.new_zeros(m.shape).masked_scatter(m, logp[rows, cols]),
                    ent.new_zeros(m.shape).masked_scatter(m, ent[rows, cols]))

    return FullLogitsWorker


def make_worker(variant: str, path: str, device: str, loss_kw: dict | None = None, **cfg):
    from learner.actor import LearnerWorker
    from learner.config import LearnerConfig, LossConfig

    if variant == "before":
        cfg = {**cfg, "pack_sequences": False, "max_tokens_per_micro_batch": None}
    cls = before_worker_class() if variant == "before" else LearnerWorker
    w = cls(LearnerConfig(device=device, optim={"lr": 1e-5}, **cfg), LossConfig(max_staleness=None, **(loss_kw or {})), path, rank=0)
    w.setup("127.0.0.1", 0)
    return w


def process_group(device: str) -> None:
    import torch.distributed as dist

    from learner.actor import free_port

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


def save_random_qwen2(d: str, vocab: int, hidden: int, layers: int, max_pos: int) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    heads = max(2, hidden // 64)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=max(1, heads // 2), intermediate_size=3 * hidden, tie_word_embeddings=True,
                      max_position_embeddings=max_pos)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(d)
    return sum(p.numel() for p in model.parameters())


# ---- memory ----------------------------------------------------------------------------------------
def peak_tracker(device: str):
    """``(start, peak_bytes)`` callables measuring the peak above the memory at ``start()``."""
    import torch

    if device == "cuda":
        base = {}

        def start():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base["b"] = torch.cuda.memory_allocated()

        return start, lambda: torch.cuda.max_memory_allocated() - base["b"]

    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} in /proc/self/status")

    base = {}

    def start():
        import gc

        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
        base["b"] = status("VmRSS")

    return start, lambda: status("VmHWM") - base["b"]


def run_case(args) -> dict:
    """One case in this process (``memory`` starts one process per case)."""
    import torch

    response, n_seqs = args.response, args.sequences
    process_group(args.device)
    with tempfile.TemporaryDirectory() as d:
        params = save_random_qwen2(d, args.vocab, args.hidden, args.layers, PROMPT + response + 8)
        budget = args.budget or n_seqs * (PROMPT + response)
        w = make_worker(args.variant, d, args.device, micro_batch_size=n_seqs, grad_accum=1,
                        max_tokens_per_micro_batch=budget, activation_checkpointing=args.activation_checkpointing or "auto")
        groups = random_groups(1, n_seqs, PROMPT, response, args.vocab, seed=0)
        start, peak = peak_tracker(args.device)
        start()
        for _ in range(args.steps):  # the first step allocates the optimizer state; tokens/s of the last
            m = w.train_step(groups)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return {"variant": args.variant, "response": response, "sequences": n_seqs, "budget": budget,
                "parameters": params, "extra_gib": peak() / GIB, "tokens_per_s": m["train_tokens_per_s"],
                "step_s": m["train_step_s"], "loss": m["loss"]}


def mem_available() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def estimate_gib(variant: str, tokens: int, vocab: int) -> float:
    """Rough need of a case: ~5 float32 copies of the logits before, ~2.5 GiB of chunks and states after."""
    if variant == "before":
        return 5 * tokens * vocab * 4 / GIB + 1.0
    return 3.0 + tokens * 64 * 1024 / GIB  # chunks, optimizer state, activations of a small model


def memory(args) -> None:
    rows = []
    for case in args.cases:
        response, _, n = case.partition("x")
        response, n_seqs = int(response), int(n or 2)
        for variant in args.variants:
            need = estimate_gib(variant, n_seqs * (PROMPT + response), args.vocab)
            free = mem_available() if args.device == "cpu" else float("inf")
            if args.device == "cpu" and free - need < args.reserve_gib:
                print(f"{variant} {case}: skipped, needs ~{need:.1f} GiB and {free:.1f} GiB are available "
                      f"(keeping {args.reserve_gib} GiB free)", flush=True)
                rows.append({"variant": variant, "response": response, "sequences": n_seqs, "skipped": need})
                continue
            cmd = [sys.executable, __file__, "_case", "--variant", variant, "--response", str(response),
                   "--sequences", str(n_seqs), "--vocab", str(args.vocab), "--hidden", str(args.hidden),
                   "--layers", str(args.layers), "--device", args.device, "--steps", str(args.steps),
                   "--budget", str(args.budget or 0)]
            if args.activation_checkpointing:
                cmd.append("--activation-checkpointing")
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
            if r.returncode != 0 or not lines:
                why = "killed (out of memory?)" if r.returncode in (-9, 137) else r.stderr.strip().splitlines()[-1:]
                print(f"{variant} {case}: failed, exit {r.returncode}: {why}", flush=True)
                rows.append({"variant": variant, "response": response, "sequences": n_seqs, "failed": r.returncode})
                continue
            row = json.loads(lines[-1])
            rows.append(row)
            print(f"{variant} {case}: +{row['extra_gib']:.2f} GiB, {row['tokens_per_s']:.0f} tokens/s "
                  f"({row['step_s']:.1f} s, loss {row['loss']:+.4f})", flush=True)
    per_step = (f"micro-batches of at most {args.budget} tokens" if args.budget
                else "one micro-batch per step")
    print(f"\nrandom Qwen2, vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, {args.device}, "
          f"{PROMPT}-token prompts, {per_step}")
    print("| response x sequences | before: extra memory | after: extra memory | memory after/before "
          "| before: tokens/s | after: tokens/s | speed after/before |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def cell(r, key, fmt):
        if r is None:
            return "—"
        if "skipped" in r:
            return f"skipped (needs ~{r['skipped']:.0f} GiB)"
        if "failed" in r:
            return f"failed (exit {r['failed']})"
        return fmt.format(r[key])

    for case in dict.fromkeys((r["response"], r["sequences"]) for r in rows):
        b = next((r for r in rows if (r["response"], r["sequences"]) == case and r["variant"] == "before"), None)
        a = next((r for r in rows if (r["response"], r["sequences"]) == case and r["variant"] == "after"), None)
        ok = b is not None and a is not None and "extra_gib" in b and "extra_gib" in a
        mem_ratio = f"{a['extra_gib'] / b['extra_gib']:.2f}x" if ok else "—"
        speed_ratio = f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x" if ok else "—"
        print(f"| {case[0]:,} x {case[1]} | {cell(b, 'extra_gib', '+{:.2f} GiB')} | {cell(a, 'extra_gib', '+{:.2f} GiB')} "
              f"| {mem_ratio} | {cell(b, 'tokens_per_s', '{:.0f}')} | {cell(a, 'tokens_per_s', '{:.0f}')} | {speed_ratio} |")


# ---- the embedded default ----------------------------------------------------------------------------
def default(args) -> None:
    import torch

    from pretraining.model import build_model

    torch.set_num_threads(args.threads)
    process_group("cpu")
    with tempfile.TemporaryDirectory() as d:
        build_model("tiny", 512, pad_token_id=0).save_pretrained(d)
        workers = {v: make_worker(v, d, "cpu", {"temperature": 1.2}, micro_batch_size=16, grad_accum=8)
                   for v in ("before", "after")}
        rates = {v: [] for v in workers}
        cpu_rates = {v: [] for v in workers}
        for step in range(args.steps):
            groups = random_groups(16, 8, 40, (8, 128), 512, seed=step)
            for v in (("before", "after") if step % 2 == 0 else ("after", "before")):
                c0 = time.process_time()
                m = workers[v].train_step(groups)
                cpu = time.process_time() - c0
                rates[v].append(m["train_tokens_per_s"])
                cpu_rates[v].append(m["train_tokens"] / cpu)
                print(f"step {step} {v}: {m['train_tokens']} tokens in {m['train_step_s']:.2f}s "
                      f"({cpu:.2f} CPU-s), loss {m['loss']:+.5f}", flush=True)
        med = {v: statistics.median(r[1:] or r) for v, r in rates.items()}
        cmed = {v: statistics.median(r[1:] or r) for v, r in cpu_rates.items()}
        print(f"\nembedded default learner (tiny Qwen3, vocab 512, 128 sequences/step), medians over steps "
              f"1..{args.steps - 1} (load average {os.getloadavg()[0]:.2f}):")
        print(f"tokens/s: before {med['before']:.0f}, after {med['after']:.0f}, after/before "
              f"{med['after'] / med['before']:.2f}x")
        print(f"tokens per CPU-second (less sensitive to other load): before {cmed['before']:.0f}, after "
              f"{cmed['after']:.0f}, after/before {cmed['after'] / cmed['before']:.2f}x")


# ---- throughput at a chosen size -------------------------------------------------------------------
def throughput(args) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    heads = args.heads or max(2, args.hidden // 64)
    cfg = Qwen3Config(hidden_size=args.hidden, num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=args.hidden // heads, num_hidden_layers=args.layers, intermediate_size=3 * args.hidden,
                      vocab_size=args.vocab, tie_word_embeddings=True, max_position_embeddings=max(args.seq, 512))
    process_group(args.device)
    with tempfile.TemporaryDirectory() as d:
        Qwen3ForCausalLM(cfg).save_pretrained(d)
        w = make_worker("after", d, args.device, micro_batch_size=args.micro,
                        grad_accum=max(1, args.batch // args.micro),
                        activation_checkpointing=args.activation_checkpointing or "auto")
        params = sum(p.numel() for p in w.model.parameters())
        print(f"model: {params / 1e6:.1f}M parameters on {w.device}, seq {args.seq}, batch {args.batch}, "
              f"micro {args.micro}, threads {torch.get_num_threads()}")
        rates = []
        prompt = max(args.seq // 4, 1)
        for step in range(args.steps):
            groups = random_groups(max(1, args.batch // 8), min(8, args.batch), prompt, args.seq - prompt,
                                   args.vocab, step)
            m = w.train_step(groups)
            rates.append(m["train_tokens_per_s"])
            print(f"step {step}: {m['train_tokens']} tokens in {m['train_step_s']:.2f}s = "
                  f"{m['train_tokens_per_s']:.0f} tokens/s, loss {m['loss']:+.4f}, grad norm {m['grad_norm']:.3f}")
        t0 = time.perf_counter()
        w.full_state_dict()
        gather = time.perf_counter() - t0
        print(f"median tokens/s (steps 2..): {statistics.median(rates[1:] or rates):.0f}; "
              f"full state dict gather {gather:.3f}s")
        if args.device == "cuda":
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / GIB:.2f} GiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("memory", "_case", "throughput"):
        p = sub.add_parser(name)
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        p.add_argument("--hidden", type=int, default=256 if name != "throughput" else 64)
        p.add_argument("--layers", type=int, default=2)
        p.add_argument("--vocab", type=int, default=151936 if name != "throughput" else 256)
        p.add_argument("--activation-checkpointing", action="store_true")
    mem = sub.choices["memory"]
    mem.add_argument("--cases", nargs="+", default=["1024x2", "4096x2", "16384x1"],
                     help="RESPONSExSEQUENCES: response tokens per sequence x sequences in the step")
    mem.add_argument("--variants", nargs="+", default=["before", "after"], choices=["before", "after"])
    mem.add_argument("--reserve-gib", type=float, default=12.0, help="never start a case leaving less free")
    mem.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    mem.add_argument("--steps", type=int, default=2, help="train steps per case (peak over all, speed of the last)")
    mem.add_argument("--budget", type=int, default=0,
                     help="micro-batch token budget (learner.max_tokens_per_micro_batch); 0 = all the case's "
                          "tokens in one micro-batch")
    case = sub.choices["_case"]
    case.add_argument("--variant", choices=["before", "after"], required=True)
    case.add_argument("--response", type=int, required=True)
    case.add_argument("--sequences", type=int, default=2)
    case.add_argument("--steps", type=int, default=2)
    case.add_argument("--budget", type=int, default=0)
    tp = sub.choices["throughput"]
    tp.add_argument("--heads", type=int, default=0, help="attention heads (default hidden/64, at least 2)")
    tp.add_argument("--seq", type=int, default=128, help="tokens per sequence (1/4 prompt)")
    tp.add_argument("--batch", type=int, default=16, help="sequences per optimizer step")
    tp.add_argument("--micro", type=int, default=8, help="micro-batch size")
    tp.add_argument("--steps", type=int, default=5)
    d = sub.add_parser("default")
    d.add_argument("--steps", type=int, default=7)
    d.add_argument("--threads", type=int, default=1, help="torch threads (the job's learner rank gets "
                   "OMP_NUM_THREADS = learner.num_cpus_per_rank, 1 by default)")
    args = ap.parse_args(argv)
    if args.cmd == "_case":
        print(json.dumps(run_case(args)), flush=True)
    else:
        {"memory": memory, "default": default, "throughput": throughput}[args.cmd](args)


if __name__ == "__main__":
    main()
