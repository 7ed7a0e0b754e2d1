"""Benchmark: rollout throughput with 1 vs 2 workers behind the router, on this machine.

    .venv/bin/python bench/scaling.py                    # tiny random Qwen3, 64 prompts x n=4 x 64 tokens
    .venv/bin/python bench/scaling.py --extra-rows ''     # only the 1- and 2-worker rows (2 engines)
    .venv/bin/python bench/scaling.py --extra-rows default,both   # all four rows (4 engines)

All engines are started once and stay up (an idle vLLM engine blocks on its input queue and costs
no CPU); every repeat runs each row once, in turn, on the same prompts through
:class:`rollout.fleet.RolloutFleet`, so load from other processes hits every row alike. Rows:

- ``1 worker``: one engine whose OpenMP compute thread is pinned to core 0;
- ``2 workers``: that engine plus one pinned to core 1 (``VLLM_CPU_OMP_THREADS_BIND`` per worker);
- ``2 workers, default binding`` (extra, on by default): the same two-worker setup as vLLM binds it unless told
  otherwise: ``auto`` puts every engine's compute thread on core 0 and reserves the rest for the
  engine-core process, so two engines on one host share one core;
- ``1 worker, 2 threads`` (extra, ``--extra-rows default,both``): one engine with compute threads on cores 0 and 1.

Tokens/s counts completion tokens produced; samples/s completions; over the wall time of one
``router.generate`` call. Prints per-repeat numbers, a markdown table (median over repeats) and
the 2-worker / 1-worker ratio per repeat (the number that counts on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def start_worker(cfg, worker_id: str, bind: str | None):
    """One RolloutWorker actor; ``bind`` is its ``VLLM_CPU_OMP_THREADS_BIND`` (None: vLLM's default)."""
    import ray

    from rollout.worker import RolloutWorker, worker_options

    opts = worker_options(cfg.model_copy(update={"cpu_threads_bind": None if bind is None else [bind]}))
    return ray.remote(RolloutWorker).options(**opts).remote(cfg.model_dump(), worker_id)


def run_row(workers: list, prompts: list[dict], sampling: dict, max_in_flight: int) -> tuple[float, float]:
    """(tokens/s, samples/s) of one batch through a router over ``workers``."""
    from rollout.fleet import RolloutFleet

    router = RolloutFleet(workers, max_in_flight=max_in_flight)
    t0 = time.perf_counter()
    groups = router.generate(prompts, sampling)
    dt = time.perf_counter() - t0
    tokens = sum(len(s["completion_token_ids"]) for g in groups for s in g["samples"])
    samples = sum(len(g["samples"]) for g in groups)
    return tokens / dt, samples / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: build a tiny random Qwen3)")
    ap.add_argument("--workers", default="1,2", help="rows to compare (only 1 and 2 are supported)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-in-flight", type=int, default=32, help="prompts in flight per worker (router cap)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--extra-rows", default="default",
                    help="comma list of extra rows: default (vLLM's own binding), both (1 worker, 2 threads); "
                         "'' for none. Every row costs an engine (memory, start-up)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if sorted(int(x) for x in args.workers.split(",")) != [1, 2]:
        raise SystemExit(f"--workers must be 1,2 on this benchmark, got {args.workers!r}")

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray
    from transformers import AutoTokenizer

    from bench.rollout import make_prompts
    from rollout.config import RolloutConfig
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3

    model = args.model or str(build_tiny_qwen3(Path("/tmp") / f"flywheel-bench-scaling-{os.getpid()}"))
    cfg = RolloutConfig(model=model, dtype="float32", max_model_len=1024, num_cpus_per_worker=1,
                        max_in_flight=args.max_in_flight)
    prompts = make_prompts(AutoTokenizer.from_pretrained(model), args.prompts)
    sampling = {"n": args.n, "max_tokens": args.max_tokens, "temperature": 1.0, "top_p": 1.0, "seed": 0}

    cores = os.cpu_count() or 2
    extra = {x for x in args.extra_rows.split(",") if x}
    if extra - {"default", "both"}:
        raise SystemExit(f"--extra-rows takes default and/or both, got {args.extra_rows!r}")
    engines = {"core0": "0", "core1": "1", **({"default": None} if "default" in extra else {}),
               **({"both": "0-1"} if "both" in extra else {})}
    # Ray CPUs are bookkeeping here: every engine is up at once, only the ones of a row run
    ray.init(num_cpus=len(engines), include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    actors = {k: start_worker(cfg, f"scale-{k}", bind) for k, bind in engines.items()}
    ray.get([a.ready.remote() for a in actors.values()])
    print(f"{len(actors)} engines up in {time.perf_counter() - t0:.0f} s on {cores} cores", flush=True)
    rows = {"1 worker (core 0)": ["core0"], "2 workers (cores 0, 1)": ["core0", "core1"]}
    if "default" in extra:
        rows["2 workers, vLLM default binding (both on core 0)"] = ["core0", "default"]
    if "both" in extra:
        rows["1 worker, 2 threads (cores 0-1)"] = ["both"]
    for ws in rows.values():  # warm-up
        run_row([actors[k] for k in ws], prompts[:8], sampling, args.max_in_flight)

    results: dict[str, list[tuple[float, float]]] = {r: [] for r in rows}
    loads = []
    for rep in range(args.repeats):
        for row, ws in rows.items():
            results[row].append(run_row([actors[k] for k in ws], prompts, sampling, args.max_in_flight))
        loads.append(os.getloadavg()[0])
        print(f"repeat {rep}: " + ", ".join(f"{r}: {v[-1][0]:.0f} tok/s" for r, v in results.items())
              + f" (load average {loads[-1]:.1f})", flush=True)
    for a in actors.values():
        ray.get(a.shutdown.remote())
        ray.kill(a)
    ray.shutdown()

    one, two = "1 worker (core 0)", "2 workers (cores 0, 1)"
    paired = [b[0] / a[0] for a, b in zip(results[one], results[two])]
    base = statistics.median(t for t, _ in results[one])
    print(f"\nworkload: {args.prompts} prompts x n={args.n} x {args.max_tokens} tokens through RolloutFleet "
          f"(max {args.max_in_flight} prompts in flight per worker), {cores} cores, "
          f"load average during the repeats {min(loads):.1f}-{max(loads):.1f}\n")
    print("| rollout workers | tokens/s (median of repeats) | samples/s | vs 1 worker |\n| --- | --- | --- | --- |")
    for row, vals in results.items():
        tps = statistics.median(t for t, _ in vals)
        sps = statistics.median(s for _, s in vals)
        print(f"| {row} | {tps:.0f} | {sps:.1f} | {tps / base:.2f} |")
    print(f"\n2 workers / 1 worker, per repeat: {[round(r, 2) for r in paired]}; median "
          f"{statistics.median(paired):.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": results, "paired_2_over_1": paired, "load_average": loads,
                                              "cores": cores}, indent=2))


if __name__ == "__main__":
    main()
