"""Benchmark: rollout throughput and in-flight weight sync on one tiny checkpoint and one prompt set.

    .venv/bin/python bench/rollout.py                      # builds a tiny random Qwen3 in /tmp
    .venv/bin/python bench/rollout.py --model runs/demo/sft/final --prompts 32 --n 4 --max-tokens 64

Measures, one after another on the same machine (never two engines at once):

- (a) our ``RolloutWorker`` (Ray actor, AsyncLLM, per-token versions and logprobs) ``generate``;
- (b) bare vLLM ``LLM.generate`` in this process, same engine settings and sampling (vLLM's
  defaults otherwise: text detokenized every step, log-probs as ``Logprob`` dicts); and, on the same
  engine, (b2) the same call returning token ids and sampled log-probs only (``detokenize=False``,
  ``flat_logprobs=True``), vLLM's floor for this workload (no text at all);
- (c) transformers ``generate`` (batched, sampling, same number of sequences and new tokens), run in
  turn with (a) and (b) in every repeat;
- (a) again while a thread pushes a new weight version every ``--update-every`` seconds: sync
  latency (whole update) and generation stall per update, and tokens/s vs none; extra rounds
  with updates run until ``--min-updates`` updates landed while requests were in flight, then
  ``--reload-updates`` more with vLLM's ``reload_weights`` path (``prepare_updates: false``) for
  comparison on the same engine.

Generation stall (the target): how long the model sat idle because of an update, measured in the
engine process from the end of the last model step before the update to the start of the first
step after it (``SyncRecord.idle_s``), next to the normal gap between two steps. The caller's
pause window (pause sent -> resume acknowledged, ``stall_s``) is reported too: it also contains the
wait for the step that was running when the pause arrived, during which tokens are still produced.

Where the crossover with transformers lies: ``--hidden-size`` / ``--layers`` build a wider or
deeper random Qwen3, ``--prompts`` / ``--n`` change the number of sequences per call, ``--no-updates``
skips the weight-update part, ``--vllm-bind`` gives both vLLM contenders another compute-thread
binding (``VLLM_CPU_OMP_THREADS_BIND``; default: vLLM's ``auto``, one thread on this 2-core machine).

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
    """``k`` prompts: for a checkpoint with a chat template (the pipeline's), GRPO's own prompts (chat-
    formatted training problems of levels 1-5), so the answers end at EOS as in training; otherwise
    plain problem texts (a random model generates until ``max_tokens``)."""
    if getattr(tokenizer, "chat_template", None):
        from pretraining.chat import format_prompt
        from pretraining.data import DIFFICULTIES, make_problems

        texts = [format_prompt(tokenizer, p.question) for p in make_problems("train", list(DIFFICULTIES), k, 123)]
        return [{"prompt_id": f"b{i}", "prompt_token_ids": tokenizer(t, add_special_tokens=False)["input_ids"]}
                for i, t in enumerate(texts)]
    from tests.fixtures.tiny_checkpoint import synthetic_corpus

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

    def set_prepare_updates(self, on: bool) -> None:
        """Switch the engine between prepare-then-commit and vLLM's reload while paused."""
        import ray

        def switch(worker, on: bool) -> None:
            worker.engine.cfg = worker.engine.cfg.model_copy(update={"prepare_updates": on})

        ray.get(self.w.__ray_call__.remote(switch, on))

    def engine_syncs(self) -> tuple[list[dict], float | None]:
        """Every update's record with the engine-side timings, and the median normal step gap."""
        import ray

        time.sleep(1.5)  # the engine fills idle_s once the step after each update has started
        st = ray.get(self.w.stats.remote())
        return st["syncs"], st["step_gap_s_median"]

    def run(self, prompts, sampling, update_every: float | None = None) -> tuple[float, list[dict]]:
        import ray

        from rollout.weight_update import WeightUpdate

        stop = threading.Event()

        def updater() -> None:
            while not stop.wait(update_every):
                self.version += 1
                self.syncs.append(ray.get(self.w.load_weights.remote(WeightUpdate(self.version, tensors=self.ref))))

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

        self.llm = LLM(model=cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                       enforce_eager=cfg.enforce_eager, seed=0, disable_log_stats=True)
        self.sp = SamplingParams(n=sampling["n"], temperature=sampling["temperature"], top_p=sampling["top_p"],
                                 max_tokens=sampling["max_tokens"], logprobs=0)
        self.sp_ids = SamplingParams(n=sampling["n"], temperature=sampling["temperature"], top_p=sampling["top_p"],
                                     max_tokens=sampling["max_tokens"], logprobs=0, detokenize=False,
                                     flat_logprobs=True)

    def run(self, prompts, ids_only: bool = False) -> float:
        """(b), or with ``ids_only`` (b2): no detokenization, flat log-probs."""
        inputs = [{"prompt_token_ids": p["prompt_token_ids"]} for p in prompts]
        t0 = time.perf_counter()
        outs = self.llm.generate(inputs, self.sp_ids if ids_only else self.sp, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / (time.perf_counter() - t0)

    def close(self) -> None:
        import gc

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()


class HFContender:
    """(c): transformers ``generate``, batched, sampling, same sequences and new tokens, in this process
    with ``--threads`` torch threads."""

    def __init__(self, cfg, prompts, sampling) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(cfg.model)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).eval()
        self.pad = self.tok.pad_token_id
        self.max_tokens = sampling["max_tokens"]
        seqs = [p["prompt_token_ids"] for p in prompts for _ in range(sampling["n"])]
        self.width = max(map(len, seqs))
        self.ids = torch.tensor([[self.pad] * (self.width - len(s)) + s for s in seqs])  # left padding
        self.mask = (torch.arange(self.width)[None, :]
                     >= torch.tensor([self.width - len(s) for s in seqs])[:, None]).long()

    def run(self) -> float:
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(input_ids=self.ids, attention_mask=self.mask, do_sample=True, temperature=1.0,
                                      top_p=1.0, max_new_tokens=self.max_tokens, pad_token_id=self.pad,
                                      eos_token_id=self.tok.eos_token_id)
        new = out[:, self.width:]
        # tokens up to and including the first EOS count (as vLLM counts them)
        eos = (new == self.tok.eos_token_id).int()
        after = (eos.cumsum(1) - eos) > 0
        return int((~after).sum()) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: build a tiny random Qwen3)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--update-every", type=float, default=0.5, help="seconds between weight updates")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every contender")
    ap.add_argument("--min-updates", type=int, default=20, help="prepared updates to measure (extra rounds)")
    ap.add_argument("--reload-updates", type=int, default=10,
                    help="updates through vLLM's reload_weights to measure for comparison (0: none)")
    ap.add_argument("--skip-baselines", action="store_true", help="only (a) and the weight updates")
    ap.add_argument("--no-updates", action="store_true", help="throughput only: skip the weight-update runs")
    ap.add_argument("--hidden-size", type=int, default=64, help="width of the built random Qwen3 (no --model)")
    ap.add_argument("--layers", type=int, default=2, help="layers of the built random Qwen3 (no --model)")
    ap.add_argument("--vllm-bind", default=None,
                    help="VLLM_CPU_OMP_THREADS_BIND for (a) and (b), e.g. '0-1' (default: vLLM's auto)")
    ap.add_argument("--compile", action="store_true",
                    help="enforce_eager=False for (a) and (b): vLLM CPU compiles the model with inductor")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray
    import torch
    from transformers import AutoTokenizer

    from rollout.config import RolloutConfig
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3, perturbed_state_dict

    torch.set_num_threads(args.threads)
    model = args.model or str(build_tiny_qwen3(Path("/tmp") / f"flywheel-bench-rollout-{os.getpid()}",
                                               hidden_size=args.hidden_size, num_layers=args.layers,
                                               num_heads=max(2, args.hidden_size // 64)))
    if args.vllm_bind:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.vllm_bind  # (b), in this process
    cfg = RolloutConfig(model=model, dtype="float32", max_model_len=1024, num_cpus_per_worker=args.threads,
                        cpu_threads_bind=[args.vllm_bind] if args.vllm_bind else None,
                        enforce_eager=not args.compile)
    prompts = make_prompts(AutoTokenizer.from_pretrained(model), args.prompts)
    sampling = {"n": args.n, "max_tokens": args.max_tokens, "temperature": 1.0, "top_p": 1.0}
    weights = perturbed_state_dict(model, scale=0.01)

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
    # Both engines stay up (idle engines cost no CPU) and the runs alternate a, b, a+updates, so
    # load from other processes on a shared machine hits every contender alike.
    wa = WorkerContender(cfg, weights)
    wa.run(prompts, sampling)  # warm-up: one full run each
    vb = None if args.skip_baselines else VLLMContender(cfg, sampling)
    if vb:
        vb.run(prompts)
    hf = None if args.skip_baselines else HFContender(cfg, prompts, sampling)
    if hf:
        hf.run()
    def settled(run):
        """``run()`` after a 0.3 s pause: each contender starts with the previous one's threads idle."""
        time.sleep(0.3)
        return run()

    tps_a, tps_b, tps_b2, tps_c, tps_u, straddled, samples = [], [], [], [], [], 0, 0
    for _ in range(args.repeats):  # a, b, b2, c in turn: outside load hits every contender alike
        tps_a.append(settled(lambda: wa.run(prompts, sampling)[0]))
        if vb:
            tps_b.append(settled(lambda: vb.run(prompts)))
            tps_b2.append(settled(lambda: vb.run(prompts, ids_only=True)))
        if hf:
            tps_c.append(settled(hf.run))
        if args.no_updates:
            continue
        tps, groups = wa.run(prompts, sampling, update_every=args.update_every)
        tps_u.append(tps)
        straddled = sum(1 for g in groups for s in g["samples"] if len(set(s["versions"])) > 1)
        samples = sum(len(g["samples"]) for g in groups)
    if vb:
        vb.close()
    # more rounds with updates until enough landed mid-generation, then the reload path on the same engine
    for _ in range(0 if args.no_updates else 20):
        if len(_measured(wa.engine_syncs()[0], prepared=True)) >= args.min_updates:
            break
        wa.run(prompts, sampling, update_every=args.update_every)
    if not args.no_updates:
        wa.set_prepare_updates(False)
    for _ in range(0 if args.no_updates else 20):
        if len(_measured(wa.engine_syncs()[0], prepared=False)) >= args.reload_updates:
            break
        wa.run(prompts, sampling, update_every=args.update_every)
    syncs, step_gap = wa.engine_syncs()
    wa.close()
    ray.shutdown()
    c = max(tps_c) if tps_c else None
    a, a_upd = max(tps_a), max(tps_u) if tps_u else None
    b = max(tps_b) if tps_b else None
    b2 = max(tps_b2) if tps_b2 else None
    paired = [x / y for x, y in zip(tps_a, tps_b)]
    paired_b2 = [x / y for x, y in zip(tps_a, tps_b2)]
    paired_c = [x / y for x, y in zip(tps_a, tps_c)]
    print("per-repeat tokens/s  a:", [round(x) for x in tps_a], " b:", [round(x) for x in tps_b], " b2:",
          [round(x) for x in tps_b2], " c:", [round(x) for x in tps_c], " a+updates:", [round(x) for x in tps_u],
          " a/b per repeat:", [round(r, 2) for r in paired], " a/b2 per repeat:", [round(r, 2) for r in paired_b2],
          " a/c per repeat:", [round(r, 2) for r in paired_c])

    fast, slow = _measured(syncs, prepared=True), _measured(syncs, prepared=False)
    res = {"a_over_b_per_repeat": paired, "a_over_b2_per_repeat": paired_b2, "a_over_c_per_repeat": paired_c,
           "load_average": os.getloadavg(),
           "tokens_per_s": {"worker": a, "vllm": b, "vllm_ids_only": b2, "transformers": c,
                            "worker_with_updates": a_upd},
           "step_gap_ms_median": None if step_gap is None else 1000 * step_gap,
           "prepared": _summary(fast), "reload": _summary(slow),
           "samples_straddling_an_update": straddled,
           "workload": f"{args.prompts} prompts x n={args.n} x {args.max_tokens} tokens, {args.threads} threads"
                       + ("" if args.model else f", random Qwen3 hidden {args.hidden_size} x {args.layers} layers")}
    print(f"\nworkload: {res['workload']} ({model}); load average at the end {os.getloadavg()}\n")
    print("| measurement | value |\n| --- | --- |")
    print(f"| (a) RolloutWorker tokens/s | {a:.0f} |")
    if b and c:
        print(f"| (b) bare vLLM `LLM.generate` tokens/s | {b:.0f} |")
        print(f"| (b2) bare vLLM, token ids only (`detokenize=False`, flat log-probs) tokens/s | {b2:.0f} |")
        print(f"| (c) transformers `generate` tokens/s | {c:.0f} |")
        print(f"| (a) / (b) (target >= 0.9), best of each / median of paired repeats | {a / b:.2f} / "
              f"{statistics.median(paired):.2f} |")
        print(f"| (a) / (b2), best of each / median of paired repeats | {a / b2:.2f} / "
              f"{statistics.median(paired_b2):.2f} |")
        print(f"| (a) / (c) (target >= 1.5), best of each / median of paired repeats | {a / c:.2f} / "
              f"{statistics.median(paired_c):.2f} |")
    if a_upd is not None:
        print(f"| (a) with an update every {args.update_every:g} s, tokens/s | {a_upd:.0f} "
              f"({a_upd / a:.2f} x no updates) |")
        print(f"| samples straddling an update (last repeat) | {straddled}/{samples} |")
    for label, sm in (("prepared, then committed while paused (default)", res["prepared"]),
                      ("vLLM `reload_weights` while paused (`prepare_updates: false`)", res["reload"])):
        if not sm:
            continue
        print(f"| **{label}**: updates measured (requests in flight) | {sm['n']} |")
        print(f"| generation stall = model idle around the update, median / p90 / max (target < 100 ms) | "
              f"{_fmt(sm['idle_ms'])} |")
        print(f"| ... of it: commit (or reload) in the engine / commit end -> next step | "
              f"{_fmt(sm['commit_ms'], 1)} / {_fmt(sm['resume_to_step_ms'], 1)} |")
        print(f"| caller's pause window (pause sent -> resumed; includes the running step) | {_fmt(sm['stall_ms'])} |")
        print(f"| ... of it: until the commit/reload was acknowledged (mostly the running step) | "
              f"{_fmt(sm['pause_ms'], 1)} |")
        print(f"| prepared before the pause, generation going on (engine thread / as seen by the caller) | "
              f"{_fmt(sm['prepare_thread_ms'], 1)} / {_fmt(sm['prepare_ms'], 1)} |")
        print(f"| weight-sync latency per update (stage + prepare + pause window), median / p90 / max | "
              f"{_fmt(sm['sync_ms'])} |")
    if step_gap is not None:
        print(f"| normal gap between two model steps (no update), median | {1000 * step_gap:.1f} ms |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


def _measured(syncs: list[dict], prepared: bool) -> list[dict]:
    """Updates of one path that landed while requests were in flight and whose idle gap is known."""
    return [s for s in syncs if s["prepared"] == prepared and s["in_flight"] > 0 and s["idle_s"] is not None]


def _summary(syncs: list[dict]) -> dict | None:
    if not syncs:
        return None
    out: dict = {"n": len(syncs)}
    for key in ("idle", "commit", "resume_to_step", "stall", "pause", "prepare_thread", "prepare", "sync"):
        xs = sorted(1000 * s[f"{key}_s"] for s in syncs if s.get(f"{key}_s") is not None)
        out[f"{key}_ms"] = {"median": statistics.median(xs), "p90": xs[round(0.9 * (len(xs) - 1))],
                            "max": xs[-1]} if xs else None
    return out


def _fmt(d: dict | None, digits: int = 0, keys: tuple[str, ...] = ("median", "p90", "max")) -> str:
    if not d:
        return "n/a"
    return " / ".join(f"{d[k]:.{digits}f}" for k in keys) + " ms"


if __name__ == "__main__":
    main()
