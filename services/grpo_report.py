"""What the GRPO job tells its user: the per-step line, ``metrics.jsonl``, evaluation rows, PNG plots.

Every optimizer step gives one row (reward mean, accuracy, response length, clip fraction, KL, entropy,
staleness histogram, rollout and training tokens/s, weight-sync time, dynamic-sampling drops, rollout
idle share); :func:`format_step_line` prints it in one readable line and ``metrics.jsonl`` keeps it all.
Evaluations (avg@k, pass@k, greedy accuracy on the held-out split) go to ``eval.jsonl``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("flywheel.grpo")


def batch_metrics(groups: list[dict[str, Any]]) -> dict[str, float]:
    """Reward mean, accuracy, response length and truncation share over all samples of ``groups``."""
    samples = [s for g in groups for s in g["samples"]]
    n = max(len(samples), 1)
    return {
        "reward_mean": sum(s["reward"] for s in samples) / n,
        "accuracy": sum(bool(s["correct"]) for s in samples) / n,
        "response_len_mean": sum(len(s["completion_token_ids"]) for s in samples) / n,
        "truncated_frac": sum(s["finish_reason"] == "length" for s in samples) / n,
        "samples": len(samples),
    }


def evaluation_metrics(groups: list[dict[str, Any]], mode: str, k: int) -> dict[str, float]:
    """``avg``: avg@k (mean correctness over all samples) and pass@k; ``greedy``: greedy accuracy."""
    from pretraining.evaluate import accuracy_metrics

    if mode == "greedy":
        return accuracy_metrics([bool(g["samples"] and g["samples"][0]["correct"]) for g in groups], None, k)
    samples = [[bool(s["correct"]) for s in g["samples"]] for g in groups]
    return {**accuracy_metrics(None, samples, k),
            "eval_problems": len(groups),
            "eval_response_len_mean": sum(len(s["completion_token_ids"]) for g in groups for s in g["samples"])
            / max(sum(len(g["samples"]) for g in groups), 1)}


def format_step_line(r: dict[str, Any]) -> str:
    stale = ",".join(f"{k}:{v}" for k, v in (r.get("staleness_histogram") or {}).items())
    idle = f" idle {r['rollout_idle_share']:.0%}" if r.get("rollout_idle_share") is not None else ""
    return (f"[{r['stage_name']}] step {r['step_in_stage']}/{r['stage_steps']} (v{r['version']}) "
            f"reward {r['reward_mean']:.3f} acc {r['accuracy']:.3f} (all drawn {r.get('rollout_accuracy', 0.0):.3f}) "
            f"len {r['response_len_mean']:.1f} "
            f"| loss {r.get('loss', 0.0):.4f} clip {r.get('clip_fraction', 0.0):.3f} kl {r.get('kl', 0.0):.4f} "
            f"ent {r.get('entropy', 0.0):.3f} | stale {{{stale}}} drop0var {r['dropped_zero_variance']} "
            f"| roll {r['rollout_tokens_per_s']:.0f} tok/s train {r.get('train_tokens_per_s', 0.0):.0f} tok/s "
            f"sync {r['weight_sync_s']:.2f}s wait {r['learner_wait_s']:.1f}s step {r['step_s']:.1f}s{idle}")


class StepReport:
    """Collects step rows and evaluations: step rows go through the pluggable
    ``pretraining.metrics.MetricsLogger`` (``metrics.jsonl`` always, TensorBoard / W&B offline as
    configured, appending across resumed runs); evaluations to ``eval.jsonl``."""

    def __init__(self, out: Path, cfg):
        from pretraining.metrics import MetricsLogger

        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []
        self._metrics = MetricsLogger(out, cfg.metrics.backends, wandb_project=cfg.metrics.wandb_project, append=True)
        self._evals = open(out / "eval.jsonl", "a")

    def step(self, s: int, progress, batch: list[dict[str, Any]], metrics: dict[str, Any], *, version: int,
             dropped: int, elapsed: float, sync_s: float, rollout_tokens: int, learner_wait_s: float,
             in_flight: int, rollout_idle_share: float, rollout_accuracy: float,
             worker_stats: list[dict[str, Any]] | None) -> dict[str, Any]:
        from services.job_config import stage_name

        stage = self.cfg.stages[s]
        row: dict[str, Any] = {
            "stage": s, "stage_name": stage_name(self.cfg, s), "stage_steps": stage.steps,
            "step_in_stage": progress.step_in_stage + 1, "global_step": progress.global_step + 1,
            "version": version, **batch_metrics(batch),
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float, dict)) and k != "version"},
            "dropped_zero_variance": dropped, "weight_sync_s": sync_s, "step_s": elapsed,
            "rollout_tokens_per_s": rollout_tokens / max(elapsed, 1e-9), "learner_wait_s": learner_wait_s,
            "in_flight": in_flight, "rollout_idle_share": rollout_idle_share,
            "rollout_accuracy": rollout_accuracy,
        }
        if worker_stats:
            stalls = [w["last_stall_s"] for w in worker_stats if w.get("last_stall_s") is not None]
            row["rollout_stall_s"] = max(stalls) if stalls else None
            row["rollout_version"] = min(w.get("version", -1) for w in worker_stats)
        row["samples_per_s"] = row["samples"] / max(elapsed, 1e-9)
        self.rows.append(row)
        self._metrics.log(row["global_step"], row)
        if row["global_step"] % self.cfg.metrics.log_every == 0:
            log.info(format_step_line(row))
        return row

    def log_eval(self, result: dict[str, Any]) -> None:
        self._evals.write(json.dumps(result) + "\n")
        self._evals.flush()
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
        log.info("eval %s", shown)

    def close(self) -> None:
        self._metrics.close()
        self._evals.close()


def _mean_staleness(histogram: dict[str, int]) -> float:
    """Mean of a ``{versions_behind: samples}`` histogram (NaN when empty)."""
    total = sum(histogram.values())
    return sum(int(k) * v for k, v in histogram.items()) / total if total else float("nan")


def write_plots(out: Path, rows: list[dict[str, Any]], evals: list[dict[str, Any]], names: list[str]) -> list[Path]:
    """``reward.png`` (reward of the trained batch, after dynamic sampling, and accuracy over every group
    drawn, before it, per step and stage), ``length_staleness.png`` (mean response length and mean
    staleness of the trained samples per step) and ``accuracy.png`` (held-out accuracy at the start and
    after every stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(8, 4))
    for s, name in enumerate(names):
        pts = [r for r in rows if r["stage"] == s]
        if pts:
            ax.plot([r["global_step"] for r in pts], [r["reward_mean"] for r in pts], label=f"{name} reward")
            ax.plot([r["global_step"] for r in pts], [r.get("rollout_accuracy", r["accuracy"]) for r in pts], "--",
                    label=f"{name} accuracy (all drawn groups)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("batch mean")
    ax.set_title("GRPO training reward per stage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "reward.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    if rows:  # response length and staleness per step (one colour per stage)
        fig, (ax_len, ax_stale) = plt.subplots(1, 2, figsize=(10, 4))
        for s, name in enumerate(names):
            pts = [r for r in rows if r["stage"] == s]
            if not pts:
                continue
            steps = [r["global_step"] for r in pts]
            ax_len.plot(steps, [r.get("response_len_mean", float("nan")) for r in pts], marker=".", label=name)
            ax_stale.plot(steps, [_mean_staleness(r.get("staleness_histogram") or {}) for r in pts], marker=".", label=name)
        ax_len.set_xlabel("optimizer step")
        ax_len.set_ylabel("mean response tokens")
        ax_len.set_title("Response length")
        ax_stale.set_xlabel("optimizer step")
        ax_stale.set_ylabel("mean versions behind")
        ax_stale.set_title("Staleness of trained samples")
        ax_len.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "length_staleness.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if evals:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [e["label"] for e in evals]
        for key in sorted({k for e in evals for k in e if k.startswith(("avg@", "pass@", "greedy_accuracy"))}):
            ax.plot(labels, [e.get(key, float("nan")) for e in evals], marker="o", label=key)
        ax.set_ylabel("held-out accuracy")
        ax.set_title("Held-out accuracy after each stage")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "accuracy.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
