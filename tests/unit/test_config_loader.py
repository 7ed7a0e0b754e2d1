"""Typed config loading: files, dotted overrides, and errors that name the bad field."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from services.config import ConfigError, describe_fields, load_config, parse_overrides


class Optim(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    lr: float = Field(1e-3, gt=0, le=1)
    """Peak learning rate."""
    betas: list[float] = [0.9, 0.95]
    """AdamW betas."""


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    steps: int = Field(10, ge=1)
    """Optimizer steps in this stage."""


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    name: str = "run"
    """Run name."""
    optim: Optim = Optim()
    """Optimizer settings."""
    stages: list[Stage] = [Stage(), Stage()]
    """Stages in order."""
    debug: bool = False
    """Verbose checks."""


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("name: a\noptim:\n  lr: 0.01\nstages:\n  - steps: 3\n  - steps: 4\n")
    cfg = load_config(Job, f, ["--optim.lr", "1e-6", "--stages.1.steps=7", "--debug", "true"])
    assert cfg.optim.lr == pytest.approx(1e-6)
    assert [s.steps for s in cfg.stages] == [3, 7]
    assert cfg.debug is True and cfg.name == "a"


def test_toml_file(tmp_path):
    f = tmp_path / "job.toml"
    f.write_text('name = "t"\n[optim]\nlr = 0.5\n')
    assert load_config(Job, f).optim.lr == 0.5


def test_out_of_range_value_names_field_value_and_bound():
    with pytest.raises(ConfigError) as e:
        load_config(Job, None, ["--optim.lr", "-1"])
    msg = str(e.value)
    assert "optim.lr" in msg and "-1" in msg and "greater than 0" in msg


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"optim\.lrr .*unknown field"):
        load_config(Job, None, ["--optim.lrr", "0.1"])


def test_list_index_out_of_range(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("stages:\n  - steps: 3\n  - steps: 4\n")
    with pytest.raises(ConfigError, match="stages has only 2 entries"):
        load_config(Job, f, ["--stages.5.steps", "1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Job, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Job, bad)


def test_override_parsing():
    assert parse_overrides(["--a.b", "[1, 2]", "--c=x", "--d", "-3"]) == {"a": {"b": [1, 2]}, "c": "x", "d": -3}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--a"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["positional"])


def test_describe_fields_lists_docstrings_and_bounds():
    text = "\n".join(describe_fields(Job))
    assert "--optim.lr" in text and "Peak learning rate." in text and "gt 0" in text


def test_a_data_file_override_replaces_the_files_difficulties(tmp_path):
    """`--stages.0.data_file` on the command line needs no `--stages.0.difficulties null` (alternatives)."""
    from services.config import load_config
    from services.job_config import GRPOJobConfig

    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("stages:\n  - difficulties: [1, 2]\n  - difficulties: [3]\n")
    cfg = load_config(GRPOJobConfig, cfg_file, ["--stages.0.data_file", "problems.parquet"])
    assert cfg.stages[0].data_file == "problems.parquet" and cfg.stages[0].difficulties is None
    assert cfg.stages[1].difficulties == [3] and cfg.stages[1].data_file is None
