"""``pretraining.optim``: the AdamW parameter groups the trainers and the GRPO learner share, and the one
``OptimConfig`` with each place's defaults."""

from __future__ import annotations

import pytest
import torch

from learner.config import LearnerConfig
from pretraining.config import DPOConfig, OptimConfig, PretrainConfig, SFTConfig
from pretraining.optim import build_optimizer, param_groups, set_base_lr
from services.config import ConfigError, load_config
from services.job_config import GRPOJobConfig

P = torch.nn.Parameter
NAMED = [("model.embed_tokens.weight", P(torch.zeros(8, 4))), ("model.layers.0.input_layernorm.weight", P(torch.ones(4))),
         ("model.layers.0.mlp.up_proj.weight", P(torch.zeros(6, 4))), ("model.layers.0.mlp.up_proj.bias", P(torch.zeros(6))),
         ("model.norm.weight", P(torch.ones(4)))]


def names(group: dict) -> list[str]:
    by_id = {id(p): n for n, p in NAMED}
    return [by_id[id(p)] for p in group["params"]]


def test_matrices_decay_embeddings_norms_and_biases_do_not():
    groups = param_groups(NAMED, OptimConfig(lr=1e-3, weight_decay=0.1))
    assert [(names(g), g["weight_decay"], g["lr"]) for g in groups] == [
        (["model.layers.0.mlp.up_proj.weight"], 0.1, 1e-3),
        (["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.mlp.up_proj.bias",
          "model.norm.weight"], 0.0, 1e-3)]


def test_the_trainers_model_gets_the_same_groups(tiny_model):
    decay, no_decay = build_optimizer(tiny_model, OptimConfig(weight_decay=0.1)).param_groups
    by_id = {id(p): n for n, p in tiny_model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all("embed" not in by_id[id(p)] and "norm" not in by_id[id(p)] for p in decay["params"])
    assert any("embed" in by_id[id(p)] for p in no_decay["params"])
    assert any("norm" in by_id[id(p)] for p in no_decay["params"])


def test_lr_scale_first_matching_pattern_wins_and_keeps_the_decay_split():
    groups = param_groups(NAMED, OptimConfig(lr=1e-4, lr_scale={"model.norm.weight": 500, "*norm*": 10}))
    assert [(names(g), g["lr"], g["lr_scale"]) for g in groups] == [
        (["model.layers.0.mlp.up_proj.weight"], 1e-4, 1.0),
        (["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.bias"], 1e-4, 1.0),
        (["model.norm.weight"], pytest.approx(5e-2), 500.0),
        (["model.layers.0.input_layernorm.weight"], pytest.approx(1e-3), 10.0)]


def test_a_pattern_that_matches_nothing_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"'model\.final_norm\.weight'.*names look like: model\.embed_tokens"):
        param_groups(NAMED, OptimConfig(lr_scale={"model.final_norm.weight": 500}))


def test_set_base_lr_keeps_the_multipliers_and_the_schedule_factor():
    opt = torch.optim.AdamW(param_groups(NAMED, OptimConfig(lr=1e-4, lr_scale={"model.norm.weight": 100})))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    set_base_lr(opt, sched, 2e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-4, 1e-2])


@pytest.mark.parametrize("bad,words", [({"lr_scale": {"x": 0}}, r"lr_scale\['x'\] must be > 0"),
                                       ({"betas": (0.9, 1.0)}, r"betas must be in \[0, 1\)")])
def test_bad_optimizer_values_are_refused(bad, words):
    with pytest.raises(ValueError, match=words):
        OptimConfig(**bad)


def test_each_place_has_its_defaults_even_for_a_section_given_in_part():
    assert (PretrainConfig().optim.lr, PretrainConfig().optim.weight_decay) == (3e-3, 0.1)
    assert (SFTConfig().optim.lr, DPOConfig().optim.lr) == (1e-3, 1e-4)
    sft = load_config(SFTConfig, None, ["--optim.grad_clip", "0.5", "--schedule.warmup_steps", "3"])
    assert (sft.optim.lr, sft.optim.weight_decay, sft.schedule.kind) == (1e-3, 0.0, "cosine")
    learner = load_config(GRPOJobConfig, None, ["--learner.optim.lr", "1e-4"]).learner.optim
    assert (learner.lr, learner.betas, learner.weight_decay) == (1e-4, (0.9, 0.999), 0.0)
    assert isinstance(LearnerConfig().optim, OptimConfig)


@pytest.mark.parametrize("cls,override,words", [
    (GRPOJobConfig, ["--learner.lr_scale", "{a: 2}"], "learner.optim.lr_scale"),
    (PretrainConfig, ["--optim.grad_accum", "2"], "set grad_accum beside optim"),
    (SFTConfig, ["--optim.z_loss", "1e-4"], "set z_loss beside optim"),
])
def test_old_field_names_say_where_the_field_went(cls, override, words):
    with pytest.raises(ConfigError) as e:
        load_config(cls, None, override)
    assert words in str(e.value)
