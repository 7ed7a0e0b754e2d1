"""Benchmark: asynchronous in-flight GRPO vs synchronous on-policy GRPO, same checkpoint, same samples.

    .venv/bin/python bench/grpo.py --model runs/demo/pretraining/dpo/final --steps 24

Runs the GRPO job twice in one process on one local Ray (same tiny checkpoint, same single stage, same
number of optimizer steps x prompts x samples): ``loss.max_staleness = --staleness`` (async, in-flight
weight updates) and ``loss.max_staleness = 0`` (sync: rollout waits for every update, the learner
waits for every batch). Prints a markdown table: training samples/s in the steady state (samples the
learner trained on in steps 2..N, not counting those it dropped as too stale, / wall time from the end of step 1 to
the end of step N), held-out avg@k before and after, learner tokens/s, rollout idle share (from the
workers' own busy time), mean weight-sync time, and the async/sync speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_mode(args, name: str, staleness: int) -> dict:
    from services.config import load_config
    from services.grpo_job import GRPOJob
    from services.job_config import GRPOJobConfig

    out = Path(args.out) / name
    if out.exists():
        import shutil

        shutil.rmtree(out)
    stage = (f"[{{name: bench, difficulties: {args.difficulties}, num_problems: 2000, "
             f"max_response_tokens: {args.max_tokens}, group_size: {args.group_size}, "
             f"prompts_per_step: {args.prompts_per_step}, steps: {args.steps}, temperature: 1.0}}]")
    cfg = load_config(GRPOJobConfig, args.config, [
        "--model", args.model, "--output_dir", str(out), "--stages", stage,
        "--loss.max_staleness", str(staleness), "--eval.num_problems", str(args.eval_problems),
        "--eval.k", "4", "--eval.greedy", "false", "--checkpoint.every_steps", "0", "--plots", "false",
        "--progress_bar", "false", "--rollout.max_in_flight", str(args.max_in_flight)])
    t0 = time.perf_counter()
    GRPOJob(cfg).run()
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    # steady state: the steps after the first, timed end to end (wall clock between the first and the last
    # step's end). Summing each step's own time instead would credit the async run with the samples it
    # generated ahead, while the job started up and evaluated, as if they had cost nothing.
    train_s = rows[-1]["time"] - rows[0]["time"]
    # samples the learner trained on: samples it dropped as too stale do not count as throughput
    trained = sum(r.get("samples_kept", r["samples"]) for r in rows[1:])
    idle = [r["rollout_idle_share"] for r in rows if r.get("rollout_idle_share") is not None]
    return {
        "mode": name, "max_staleness": staleness, "steps": len(rows),
        "samples": trained, "dropped_stale": sum(r.get("dropped_stale", 0) for r in rows),
        "train_wall_s": train_s, "job_wall_s": wall, "samples_per_s": trained / train_s,
        "acc_before": evals[0]["avg@4"], "acc_after": evals[-1]["avg@4"],
        "learner_tokens_per_s": sum(r.get("train_tokens", 0) for r in rows) / max(sum(r.get("train_step_s", 0) for r in rows), 1e-9),
        "rollout_idle_share": sum(idle) / len(idle) if idle else float("nan"),
        "weight_sync_s": sum(r["weight_sync_s"] for r in rows) / len(rows),
        "reward_last": rows[-1]["reward_mean"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="starting HF checkpoint (e.g. the DPO output)")
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "grpo_tiny.yaml"))
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-in-flight", type=int, default=16)
    p.add_argument("--difficulties", default="[1, 2]")
    p.add_argument("--staleness", type=int, default=4,
                   help="max_staleness of the async run (prompts are issued issue_ahead_steps=2 batches ahead)")
    p.add_argument("--eval-problems", type=int, default=100)
    p.add_argument("--out", default="runs/bench_grpo")
    args = p.parse_args()

    import logging

    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    results = [run_mode(args, "async", args.staleness), run_mode(args, "sync", 0)]
    ray.shutdown()
    a, s = results
    print("\n| mode | max_staleness | trained samples (steps 2-N) | dropped stale | wall s (steps 2-N) | samples/s | avg@4 before | avg@4 after | "
          "learner tok/s | rollout idle | weight sync s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['max_staleness']} | {r['samples']} | {r['dropped_stale']} | {r['train_wall_s']:.1f} | "
              f"{r['samples_per_s']:.2f} | {r['acc_before']:.3f} | {r['acc_after']:.3f} | "
              f"{r['learner_tokens_per_s']:.0f} | {r['rollout_idle_share']:.1%} | {r['weight_sync_s']:.2f} |")
    print(f"\nasync / sync samples/s: {a['samples_per_s'] / s['samples_per_s']:.2f}x "
          f"(target >= 1.3x); async rollout idle {a['rollout_idle_share']:.1%} (target < 10%)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
