"""The `flywheel` CLI answers --help for every subcommand without importing torch, vllm or ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import COMMANDS

HEAVY = ("torch", "vllm", "ray", "transformers")
PROBE = """
import json, sys, io, contextlib
from services.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    code = main({argv!r})
print(json.dumps({{"code": code, "out": buf.getvalue(), "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def run_cli(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_top_level_help_lists_every_command_without_heavy_imports():
    r = run_cli(["--help"])
    assert r["code"] == 0 and r["heavy"] == []
    for name in COMMANDS:
        assert name in r["out"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_without_heavy_imports(name):
    r = run_cli([name, "--help"])
    assert r["code"] == 0
    assert r["heavy"] == [], f"`flywheel {name} --help` imported {r['heavy']}"
    assert f"flywheel {name}" in r["out"]


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("flywheel")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "serve-reward" in out.stdout


def test_bad_override_is_a_clear_error_and_nonzero_exit():
    """Any command with a config: an out-of-range value names the field and exits 2."""
    out = subprocess.run([sys.executable, "-m", "services.cli", next(iter(COMMANDS)), "--no_such_field", "1"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert out.returncode == 2
    assert "no_such_field" in out.stderr and "unknown field" in out.stderr
