"""Package hygiene: ``import rewards`` stays light, configs document every field, the parser never evals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rewards import RewardConfig, VerifyConfig


def test_import_rewards_pulls_no_heavy_modules():
    code = ("import sys, rewards, rewards.ray_pool; "
            "print(sorted(m for m in ('torch', 'ray', 'sympy', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("cls", [VerifyConfig, RewardConfig])
def test_every_config_field_has_a_docstring(cls):
    missing = [name for name, f in cls.model_fields.items() if not (f.description or "").strip()]
    assert not missing


def test_server_config_fields_documented():
    from services.reward_server import RewardServerConfig

    missing = [name for name, f in RewardServerConfig.model_fields.items() if not (f.description or "").strip()]
    assert not missing
    assert RewardServerConfig().host == "127.0.0.1"


def test_parser_builds_sympy_without_eval(monkeypatch):
    import builtins

    import sympy

    from rewards.latex_parser import parse_expression

    def no_eval(*a, **k):
        raise AssertionError("eval called")

    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(sympy, "sympify", no_eval)
    expr = parse_expression("\\frac{\\sqrt{2}}{2}+x^2-\\sin(\\pi/6)", VerifyConfig()).expr
    assert expr == sympy.sqrt(2) / 2 + sympy.Symbol("x") ** 2 - sympy.Rational(1, 2)


def test_python_code_is_not_an_expression():
    from rewards.latex_parser import ParseError, parse_expression

    with pytest.raises(ParseError):
        parse_expression("__import__('os').system('true')", VerifyConfig())


def test_serve_reward_config_file_loads():
    from pathlib import Path

    from services.config import load_config
    from services.reward_server import RewardServerConfig

    path = Path(__file__).resolve().parents[3] / "configs" / "serve_reward.yaml"
    cfg = load_config(RewardServerConfig, path, ["--http_port", "9000", "--reward.wrong_reward", "-1"])
    assert cfg.http_port == 9000 and cfg.reward.wrong_reward == -1.0 and cfg.host == "127.0.0.1"
