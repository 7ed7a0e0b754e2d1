"""``lr_scaled_groups``: learning-rate multipliers by parameter name."""

from __future__ import annotations

import pytest

from learner.actor import lr_scaled_groups
from learner.config import LearnerConfig

NAMED = [("model.embed_tokens.weight", "E"), ("model.layers.0.input_layernorm.weight", "g0"),
         ("model.layers.0.mlp.up_proj.weight", "W0"), ("model.norm.weight", "g")]


def test_no_scales_is_one_group_at_the_base_lr():
    assert lr_scaled_groups(NAMED, {}, 1e-4) == [{"params": ["E", "g0", "W0", "g"], "lr": 1e-4, "lr_scale": 1.0}]


def test_first_matching_pattern_wins():
    groups = lr_scaled_groups(NAMED, {"model.norm.weight": 500, "*norm*": 10}, 1e-4)
    assert [(g["params"], g["lr"]) for g in groups] == [
        (["E", "W0"], 1e-4), (["g"], pytest.approx(5e-2)), (["g0"], pytest.approx(1e-3))]


def test_a_pattern_that_matches_nothing_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"'model\.final_norm\.weight'.*names look like: model\.embed_tokens"):
        lr_scaled_groups(NAMED, {"model.final_norm.weight": 500}, 1e-4)


def test_factors_must_be_positive():
    with pytest.raises(ValueError, match=r"lr_scale\['x'\] must be > 0"):
        LearnerConfig(lr_scale={"x": 0})
