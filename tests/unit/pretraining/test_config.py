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


def test_eval_and_the_grpo_jobs_eval_share_one_held_out_config():
    from pretraining.config import HeldoutConfig
    from services.job_config import GRPOJobConfig

    shared = set(HeldoutConfig.model_fields)
    job = load_config(GRPOJobConfig, None, ["--eval.at_start", "false"]).eval
    assert isinstance(job, HeldoutConfig) and isinstance(EvalConfig(), HeldoutConfig)
    assert set(EvalConfig.model_fields) - shared == {"checkpoint", "out", "kv_cache_gib", "system_prompt", "prompt_template"}
    assert set(type(job).model_fields) - shared == {"enabled", "at_start", "greedy"}
    # each keeps its own defaults, also when its section is given in part
    assert (job.num_problems, job.difficulties, job.max_response_tokens) == (100, None, None)
    assert (EvalConfig().num_problems, EvalConfig().max_response_tokens) == (200, 160)


def test_eval_keeps_its_first_spellings():
    cfg = load_config(EvalConfig, None, ["--n", "7", "--max_tokens", "9"])
    assert (cfg.num_problems, cfg.max_response_tokens) == (7, 9)
    with pytest.raises(ConfigError, match="give num_problems once"):
        load_config(EvalConfig, None, ["--n", "7", "--num_problems", "8"])
