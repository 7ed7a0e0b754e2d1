"""The default pipeline end to end (slow: ~20+ minutes on 2 cores): tokenizer -> pretrain -> SFT -> DPO."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_default_pipeline_sft_beats_base_and_dpo_holds(tmp_path):
    from services.pipeline import run_pipeline

    r = run_pipeline(tmp_path / "pipeline")
    acc = {k: v["greedy_accuracy"] for k, v in r["accuracy"].items()}
    assert acc["sft"] >= acc["base"] + 0.10, acc  # a clear margin
    assert acc["dpo"] >= acc["sft"] - 0.01, acc  # not below SFT (one problem in 200 of sampling noise)
    for path in r["checkpoints"].values():
        assert (tmp_path / "pipeline").exists() and path
