"""Configs: the repo defaults validate, bad values name the field, and the module imports no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pretraining.config import DPOConfig, EvalConfig, MergeConfig, PretrainConfig, SFTConfig
from services.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("cls,name", [(PretrainConfig, "pretrain_tiny"), (SFTConfig, "sft_tiny"),
                                      (DPOConfig, "dpo_tiny"), (EvalConfig, "eval_tiny")])
def test_repo_configs_validate(cls, name):
    load_config(cls, REPO / "configs" / f"{name}.yaml")


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match=r"optim.lr = -1: Input should be greater than 0"):
        load_config(SFTConfig, None, ["--optim.lr", "-1"])
    with pytest.raises(ConfigError, match="loss"):
        load_config(DPOConfig, None, ["--loss", "kto"])
    with pytest.raises(ConfigError, match="unknown source"):
        load_config(PretrainConfig, REPO / "configs/pretrain_tiny.yaml", ["--stages.0.mixture", "{poetry: 1.0}"])
    with pytest.raises(ConfigError, match="weights has 1 entries for 2 checkpoints"):
        load_config(MergeConfig, None, ["--checkpoints", "[a, b]", "--weights", "[1.0]"])


def test_config_module_imports_no_torch():
    code = "import sys, pretraining.config; print(any(m.split('.')[0] in ('torch', 'vllm', 'transformers') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fsdp_on_off_survive_yaml_booleans():
    # YAML 1.1 turns a bare on/off into a bool, in files and in --key value overrides alike
    assert load_config(PretrainConfig, None, ["--distributed.fsdp", "off"]).distributed.fsdp == "off"
    assert load_config(PretrainConfig, None, ["--distributed.fsdp", "on"]).distributed.fsdp == "on"
    with pytest.raises(ConfigError, match="distributed.fsdp"):
        load_config(PretrainConfig, None, ["--distributed.fsdp", "sometimes"])
