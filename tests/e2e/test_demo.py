"""`flywheel demo` end to end: tokenizer -> pretrain -> SFT -> DPO -> 3-stage GRPO -> evaluation -> report.

The default suite runs it with toy-size overrides (a few optimizer steps per phase, 10 held-out
problems): every phase runs for real (vLLM, Ray, the verifier, FSDP2) and the report is complete. The
full-size default (what `make demo` runs) is marked `slow`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLYWHEEL = Path(sys.executable).with_name("flywheel")
TOY = ["--eval.num_problems", "10", "--eval.k", "2",
       "--pretraining", "{pretrain: {stages: {0: {steps: 4}, 1: {steps: 2}}, tokenizer: {train_docs: 300}}, "
                        "sft: {n_examples: 40, epochs: 1}, dpo: {n_pairs: 16}}",
       "--grpo", "{stages: {0: {steps: 1}, 1: {steps: 1}, 2: {steps: 1}}, eval: {num_problems: 8}}"]
ROWS = ["base", "sft", "dpo", "grpo:stage1_short", "grpo:stage2_medium", "grpo:stage3_long"]


def run_demo(out: Path, extra: list[str], timeout: int) -> str:
    proc = subprocess.run([str(FLYWHEEL), "demo", "--out_dir", str(out), *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**__import__("os").environ, "OMP_NUM_THREADS": "2"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


def check_report(out: Path, log: str) -> None:
    for phase in ("phase 1/3", "phase 2/3", "phase 3/3"):
        assert phase in log
    report = (out / "report.md").read_text()
    for row in ROWS:
        assert f"| {row} |" in report, report
    for png in ("grpo/reward.png", "grpo/length_staleness.png", "grpo/accuracy.png", "pretraining/pretrain/loss.png"):
        assert (out / png).is_file(), png
        assert f"]({png})" in report
    for ckpt in ("pretraining/dpo/final", "grpo/stage3_long_hf"):
        assert (out / ckpt / "config.json").is_file()


@pytest.mark.timeout(2400)
def test_demo_runs_every_phase_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    check_report(out, run_demo(out, TOY, timeout=2300))


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_full_default_demo(tmp_path):
    """What `make demo` runs (target: <= 45 min on an idle 2-core CPU)."""
    out = tmp_path / "demo"
    check_report(out, run_demo(out, [], timeout=4 * 3600 - 60))
