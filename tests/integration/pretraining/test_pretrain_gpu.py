"""Pretraining, SFT and DPO on a GPU: one process on a machine with CUDA trains there (a 1-rank NCCL
FSDP2 group, bf16 compute, fp32 master weights) and follows the fp32 CPU run. Marked ``gpu``."""

from __future__ import annotations

import json

import pytest

from tests.integration.pretraining.conftest import REPO, SMALL_PRETRAIN

pytestmark = pytest.mark.gpu


def _run(out, *extra: str) -> dict:
    from pretraining.config import PretrainConfig
    from pretraining.pretrain import run_pretrain
    from services.config import load_config

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain_tiny.yaml",
                      ["--out_dir", str(out), *SMALL_PRETRAIN, *extra])
    return run_pretrain(cfg)


def test_pretrain_on_cuda_follows_the_cpu_run(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    gpu = _run(tmp_path / "gpu")
    cpu = _run(tmp_path / "cpu", "--distributed.fsdp", "off")
    assert gpu["device"].startswith("cuda") and cpu["device"] == "cpu"
    lg, lc = [h["loss"] for h in gpu["history"]], [h["loss"] for h in cpu["history"]]
    assert len(lg) == len(lc) == 8 and lg[-1] < lg[0]
    assert lg == pytest.approx(lc, rel=3e-2)  # bf16 compute vs fp32, same data and init
    m = AutoModelForCausalLM.from_pretrained(gpu["final"]).cuda()
    assert next(m.parameters()).dtype == torch.float32  # master weights exported in fp32
    assert torch.isfinite(m(input_ids=torch.tensor([[5, 6, 7]], device="cuda")).logits).all()


def test_sft_and_dpo_on_cuda(sft_checkpoint, tmp_path):
    from tests.integration.pretraining.conftest import run_cli

    recs = [json.loads(x) for x in (sft_checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    assert recs and all(r["loss"] > 0 for r in recs if "loss" in r)
    assert run_cli("dpo", "--config", str(REPO / "configs/dpo_tiny.yaml"), "--init_from", str(sft_checkpoint),
                   "--out_dir", str(tmp_path), "--n_pairs", "16", "--batch_size", "8", "--pairs", "synthetic") == 0
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)  # policy == reference (same bf16 forward)
    assert (tmp_path / "final/model.safetensors").is_file()
