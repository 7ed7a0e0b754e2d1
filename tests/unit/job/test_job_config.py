"""GRPOJobConfig: the shipped configs validate, stage overrides are checked, errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import ConfigError, load_config
from services.job_config import GRPOJobConfig, StageConfig, stage_loss, stage_name, stage_reward

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["grpo_tiny.yaml", "grpo_test.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(GRPOJobConfig, REPO / "configs" / name)
    assert cfg.stages
    lengths = [s.max_response_tokens for s in cfg.stages]
    assert lengths == sorted(lengths), "stages grow their response length"


def test_tiny_default_has_three_growing_stages():
    cfg = load_config(GRPOJobConfig, REPO / "configs" / "grpo_tiny.yaml")
    assert len(cfg.stages) == 3
    assert cfg.stages[0].max_response_tokens < cfg.stages[1].max_response_tokens < cfg.stages[2].max_response_tokens
    assert cfg.loss.max_staleness and cfg.loss.max_staleness > 0, "the default is asynchronous"


def test_stage_loss_overrides_apply_on_top_of_the_job_loss():
    cfg = GRPOJobConfig(loss={"clip_high": 0.28, "kl_coef": 0.0},
                        stages=[{"loss": {}}, {"loss": {"clip_high": 0.2, "kl_coef": 0.01}}])
    assert stage_loss(cfg, 0).clip_high == 0.28
    assert (stage_loss(cfg, 1).clip_high, stage_loss(cfg, 1).kl_coef) == (0.2, 0.01)
    assert stage_name(cfg, 1) == "stage1"


def test_bad_stage_loss_override_names_the_stage_and_field():
    with pytest.raises(ConfigError, match=r"stages\.1\.loss.*clip_low"):
        load_config(GRPOJobConfig, None, ["--stages", "[{}, {loss: {clip_low: 5}}]"])
    with pytest.raises(ConfigError, match=r"stages\.0\.loss.*no_such_knob"):
        load_config(GRPOJobConfig, None, ["--stages", "[{loss: {no_such_knob: 1}}]"])


def test_dotted_override_of_a_stage_field():
    cfg = load_config(GRPOJobConfig, REPO / "configs" / "grpo_test.yaml", ["--stages.0.steps", "3"])
    assert cfg.stages[0].steps == 3
    with pytest.raises(ConfigError, match=r"stages\.0\.group_size"):
        load_config(GRPOJobConfig, REPO / "configs" / "grpo_test.yaml", ["--stages.0.group_size", "1"])


def test_stage_needs_exactly_one_data_source():
    with pytest.raises(ValueError, match="exactly one"):
        StageConfig(difficulties=[1], data_file="x.jsonl")
    assert StageConfig().difficulties == [1]  # neither: the synthetic level 1
    assert StageConfig(difficulties=None).difficulties == [1]
    only_file = StageConfig(data_file="x.jsonl")  # no need to null the default levels
    assert (only_file.data_file, only_file.difficulties) == ("x.jsonl", None)
    assert StageConfig.model_validate(only_file.model_dump()) == only_file  # the job's config.json loads again


def test_overlong_penalty_follows_the_stage_length():
    cfg = GRPOJobConfig(stages=[{"max_response_tokens": 64}, {"max_response_tokens": 128, "overlong_buffer_tokens": 32}])
    assert stage_reward(cfg, 0).max_response_tokens is None
    r = stage_reward(cfg, 1)
    assert (r.max_response_tokens, r.overlong_buffer_tokens) == (128, 32)


def test_sync_mode_is_max_staleness_zero():
    cfg = load_config(GRPOJobConfig, REPO / "configs" / "grpo_test.yaml", ["--loss.max_staleness", "0"])
    assert cfg.loss.max_staleness == 0


def test_the_learner_scores_tokens_at_each_stage_s_sampling_temperature():
    cfg = GRPOJobConfig(stages=[{"temperature": 0.6}, {"temperature": 1.0, "loss": {"clip_high": 0.3}}])
    assert stage_loss(cfg, 0).temperature == 0.6
    assert (stage_loss(cfg, 1).temperature, stage_loss(cfg, 1).clip_high) == (1.0, 0.3)
    with pytest.raises(ConfigError, match=r"loss\.temperature: set each stage's temperature"):
        load_config(GRPOJobConfig, None, ["--loss.temperature", "0.6"])
    with pytest.raises(ConfigError, match=r"stages\.0\.loss\.temperature: set stages\.0\.temperature"):
        load_config(GRPOJobConfig, None, ["--stages", "[{loss: {temperature: 0.6}}]"])
    with pytest.raises(ConfigError, match=r"stages\.0\.temperature"):
        load_config(GRPOJobConfig, None, ["--stages", "[{temperature: 0}]"])


def test_the_config_json_a_job_writes_loads_again(tmp_path):
    cfg = load_config(GRPOJobConfig, REPO / "configs" / "grpo_tiny.yaml")
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    assert load_config(GRPOJobConfig, tmp_path / "config.json") == cfg


def test_a_stage_longer_than_the_checkpoint_supports_is_refused_naming_both_numbers(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {tmp_path}\nmax_prompt_tokens: 256\nstages: [{{max_response_tokens: 256}}]\n")
    assert load_config(GRPOJobConfig, job).stages[0].max_response_tokens == 256
    with pytest.raises(ConfigError, match=r"256 \+ 300 = 556 exceeds .* supports \(512"):
        load_config(GRPOJobConfig, job, ["--stages.0.max_response_tokens", "300"])


def test_stage_loss_overrides_are_typed_and_survive_the_config_json_round_trip():
    repo = Path(__file__).resolve().parents[3]
    cfg = load_config(GRPOJobConfig, repo / "configs/grpo_tiny.yaml",
                      ["--stages.1.loss.kl_coef", "0.05", "--stages.0.loss.tis_cap", "null"])
    assert stage_loss(cfg, 1).kl_coef == 0.05 and stage_loss(cfg, 0).tis_cap is None  # null is an override too
    assert stage_loss(cfg, 2).tis_cap == cfg.loss.tis_cap
    assert cfg.stages[0].loss.model_dump() == {"tis_cap": None}  # only what was set is written out
    assert GRPOJobConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ConfigError, match=r"stages\.1\.loss\.kl_coeff = 0.05: unknown field"):
        load_config(GRPOJobConfig, repo / "configs/grpo_tiny.yaml", ["--stages.1.loss.kl_coeff", "0.05"])
