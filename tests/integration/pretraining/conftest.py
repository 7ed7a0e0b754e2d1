"""Fixtures for the pretraining integration tests: one small real pretraining run shared by all."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# A few steps of the real pipeline at toy sizes (tiny model, 64-token rows).
SMALL_PRETRAIN = ["--seq_len", "64", "--batch_size", "4", "--tokenizer.train_docs", "300", "--tokenizer.vocab_size",
                  "400", "--stages.0.steps", "4", "--stages.1.steps", "4", "--schedule.warmup_steps", "2",
                  "--metrics.log_every", "2"]


def run_cli(*argv: str) -> int:
    from services.cli import main

    return main(list(argv))


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """``flywheel pretrain`` with the repo's default config and toy-size overrides; returns the run folder."""
    out = tmp_path_factory.mktemp("pretrain")
    assert run_cli("pretrain", "--config", str(REPO / "configs/pretrain_tiny.yaml"), "--out_dir", str(out),
                   "--save_every", "2", *SMALL_PRETRAIN) == 0
    return out


@pytest.fixture(scope="session")
def sft_checkpoint(pretrained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    assert run_cli("sft", "--config", str(REPO / "configs/sft_tiny.yaml"), "--init_from", str(pretrained / "final"),
                   "--out_dir", str(out), "--n_examples", "40", "--seq_len", "256", "--batch_size", "4",
                   "--epochs", "1") == 0
    return out / "final"
