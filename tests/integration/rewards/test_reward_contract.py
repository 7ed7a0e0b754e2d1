"""The reward service's OpenAPI spec is its contract. schemathesis (its CLI, every check) generates valid
and invalid requests from the spec the real server publishes and checks each answer: no 5xx, only
declared status codes, content types and headers, bodies matching their schemas, requests the spec
allows accepted, those it forbids refused, the bearer token enforced. Bounded (examples per operation)
and deterministic: the same requests on every run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from reward_server_process import TOKEN

HERE = Path(__file__).resolve().parent


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("schemathesis")
    if found is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    return [found]


def test_schemathesis_finds_nothing(reward_server):
    cmd = [*_schemathesis(), "--config-file", str(HERE / "schemathesis.toml"), "run",
           f"{reward_server['http']}/openapi.json", "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}",
           "--max-examples", "50", "--generation-deterministic", "--workers", "1", "--request-timeout", "60",
           "--max-failures", "5", "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    summary = r.stdout[r.stdout.find("FAILURES"):] if "FAILURES" in r.stdout else r.stdout
    assert r.returncode == 0, (summary[:6000] + "\n...\n" + r.stdout[-2000:] + r.stderr[-2000:])
    assert "passed" in r.stdout
