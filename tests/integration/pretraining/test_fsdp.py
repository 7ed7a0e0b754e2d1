"""FSDP2 on gloo: two ranks (torchrun, explicit CPU mesh) train exactly like one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import free_port
from tests.integration.pretraining.conftest import REPO, run_cli

ARGS = ["--seq_len", "64", "--stages.0.steps", "2", "--stages.1.steps", "2", "--schedule.warmup_steps", "1",
        "--z_loss", "1e-4"]


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _torchrun_pretrain(out_dir, tok: str, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "services.cli", "pretrain", "--config", str(REPO / "configs/pretrain_tiny.yaml"),
           "--out_dir", str(out_dir), "--tokenizer.path", tok, "--batch_size", "2", *ARGS, *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_rank_fsdp2_on_gloo_matches_one_rank_and_resumes_exactly(pretrained, tmp_path):
    tok = str(pretrained / "tokenizer")
    cfg = str(REPO / "configs/pretrain_tiny.yaml")
    assert run_cli("pretrain", "--config", cfg, "--out_dir", str(tmp_path / "one"), "--tokenizer.path", tok,
                   "--batch_size", "4", *ARGS) == 0
    _torchrun_pretrain(tmp_path / "two", tok)  # 2 ranks x 2 rows = the same 4-row global batch
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    a = load_file(str(tmp_path / "one/final/model.safetensors"))
    b = load_file(str(tmp_path / "two/final/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)

    # Stop after stage 1 (step 2) and resume with 2 ranks: the sharded AdamW moments come back from the
    # gathered full state, so steps 3-4 repeat the uninterrupted run's losses and weights.
    stage1 = next((tmp_path / "two").glob("stage-1-*"))
    state = torch.load(stage1 / "training_state.pt", weights_only=True)
    assert state["step"] == 2 and isinstance(state["optimizer"]["param_groups"][0]["params"][0], str)
    assert state["optimizer"]["state"], "the gathered optimizer state is empty"
    shutil.copytree(stage1, tmp_path / "resumed" / stage1.name)
    _torchrun_pretrain(tmp_path / "resumed", tok, "--resume", "true")
    resumed = _losses(tmp_path / "resumed")
    assert len(resumed) == 2
    assert resumed == pytest.approx(two[2:], rel=1e-5, abs=1e-6)
    c = load_file(str(tmp_path / "resumed/final/model.safetensors"))
    for k in b:
        torch.testing.assert_close(c[k], b[k], atol=1e-5, rtol=1e-4)
