"""Bad input at the data and config boundaries: every refusal names the file and line (or the field)
and the problem, and nothing is half-read. Real job configs and the real ``flywheel`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.config import ConfigError, load_config
from services.grpo_data import check_data_files, read_problems
from services.job_config import GRPOJobConfig

TINY = str(Path(__file__).resolve().parents[3] / "configs" / "grpo_tiny.yaml")
GOOD = json.dumps({"question": "1+1?", "answer": "2"})


@pytest.mark.parametrize("line,words", [
    ('{"question": "q", "answer": ', "not valid JSON"),
    ('["q", "a"]', "needs 'question' and 'answer'"),
    ('{"question": "q"}', "needs 'question' and 'answer'"),
    ('{"question": "q", "answer": null}', "'answer' must be a non-empty string or a number, got None"),
    ('{"question": "q", "answer": "  "}', "'answer' must be a non-empty string"),
    ('{"question": "q", "answer": true}', "'answer' must be"),
    ('{"question": "", "answer": "1"}', "'question' must be a non-empty string"),
    ('{"question": ["q"], "answer": "1"}', "'question' must be a non-empty string"),
    ('{"question": "q", "answer": "1", "difficulty": "hard"}', "'difficulty' must be an integer, got 'hard'"),
])
def test_a_bad_line_is_an_error_naming_file_line_and_problem(tmp_path, line, words):
    f = tmp_path / "stage.jsonl"
    f.write_text(GOOD + "\n\n" + line + "\n" + GOOD + "\n")
    with pytest.raises(ValueError) as e:
        read_problems(f)
    assert f"{f}:3:" in str(e.value) and words in str(e.value)


def test_numbers_as_answers_are_accepted_as_strings(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": 3.5, "difficulty": 2}) + "\n")
    [p] = read_problems(f)
    assert (p.answer, p.difficulty) == ("3.5", 2)


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_an_empty_dataset_is_an_error(tmp_path, content):
    f = tmp_path / "empty.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError, match=r"empty\.jsonl: no problems"):
        read_problems(f)


def test_a_file_that_is_not_utf8_or_missing_is_named(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"question": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl: not UTF-8"):
        read_problems(f)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_problems(tmp_path / "nope.jsonl")


def _job_with_files(tmp_path, stage_files: list[str], eval_file: str | None = None) -> GRPOJobConfig:
    overrides = []
    for i, f in enumerate(stage_files):
        overrides += [f"--stages.{i}.data_file", f, f"--stages.{i}.difficulties", "null"]  # the file sets them
    if eval_file:
        overrides += ["--eval.data_file", eval_file]
    return load_config(GRPOJobConfig, TINY, overrides)


def test_the_job_checks_every_stage_file_before_training(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(GOOD + "\n")
    bad.write_text(GOOD + "\n" + '{"question": "q", "answer": null}\n')
    n = len(load_config(GRPOJobConfig, TINY).stages)
    assert n >= 2, "the tiny job has several stages"
    check_data_files(_job_with_files(tmp_path, [str(good)] * n, str(good)))
    with pytest.raises(ValueError, match=rf"stages\.{n - 1}\.data_file: .*bad\.jsonl:2: 'answer'"):
        check_data_files(_job_with_files(tmp_path, [str(good)] * (n - 1) + [str(bad)], str(good)))
    with pytest.raises(ValueError, match=r"eval\.data_file: .*no problems"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        check_data_files(_job_with_files(tmp_path, [str(good)] * n, str(empty)))


@pytest.mark.parametrize("override,words", [
    (["--learner.optim.lr", "abc"], "learner.optim.lr = 'abc': Input should be a valid number"),
    (["--learner.lr", "1e-5"], "'lr' moved: the optimizer's settings are one section: learner.optim.lr"),
    (["--stages.0.num_problems", "[1, 2]"], "stages.0.num_problems"),
    (["--stages.0.data_fil", "x.jsonl"], "stages.0.data_fil = 'x.jsonl': unknown field"),
    (["--stages.0.num_problems", "0"], "greater than or equal to 1"),
    (["--stages.0.data_file", "x.jsonl", "--stages.0.difficulties", "[1]"], "give exactly one of difficulties"),
])
def test_job_config_wrong_type_unknown_key_bad_value_name_the_field(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(GRPOJobConfig, TINY, override)
    assert words in str(e.value)


def test_cli_reports_a_bad_config_without_a_traceback(capsys):
    from services.cli import main

    assert main(["serve-reward", "--workers", "many"]) == 2
    err = capsys.readouterr().err
    assert "workers = 'many'" in err and "Traceback" not in err
