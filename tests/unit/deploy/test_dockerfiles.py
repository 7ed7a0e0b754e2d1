"""Structural lint of deploy/Dockerfile.{cpu,gpu}. No container engine is available where these tests run,
so the images are not built here; this checks what can be checked without one: the instructions parse,
every COPY source exists in the build context (the repository root), the project is installed by
deploy/setup.sh exactly as the README does it (with the right extra), the local venv never enters the
context, and the default command names a module that exists."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"

DOCKERFILES = {"cpu": DEPLOY / "Dockerfile.cpu", "gpu": DEPLOY / "Dockerfile.gpu"}
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "EXPOSE", "CMD", "ENTRYPOINT", "USER",
                "LABEL", "SHELL", "HEALTHCHECK", "VOLUME", "STOPSIGNAL", "ONBUILD"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments and parser directives dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments; the JSON (exec) form is required so signals reach the process."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerignore_patterns(dockerfile) -> list[str]:
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert path.is_file(), f"{path.name} missing: the local .venv would enter the build context"
    return [p.strip() for p in path.read_text().splitlines() if p.strip() and not p.startswith("#")]


@pytest.fixture(params=sorted(DOCKERFILES), ids=lambda k: f"Dockerfile.{k}")
def dockerfile(request):
    return request.param, DOCKERFILES[request.param], parse_dockerfile(DOCKERFILES[request.param].read_text())


def test_instructions_are_known_and_start_from_a_python_base(dockerfile):
    _, path, instrs = dockerfile
    assert all(op in INSTRUCTIONS for op, _ in instrs), [op for op, _ in instrs if op not in INSTRUCTIONS]
    ops = [op for op, _ in instrs]
    assert ops.index("FROM") == min(i for i, op in enumerate(ops) if op != "ARG")
    base = next(a for op, a in instrs if op == "FROM")
    requires = re.search(r'requires-python\s*=\s*">=\s*(\d+\.\d+)', (REPO / "pyproject.toml").read_text()).group(1)
    m = re.search(r"python:(\d+\.\d+)", base)
    assert m and tuple(map(int, m.group(1).split("."))) >= tuple(map(int, requires.split("."))), base


def test_both_images_share_a_base_so_they_can_join_one_ray_cluster():
    bases = {k: next(a for op, a in parse_dockerfile(p.read_text()) if op == "FROM") for k, p in DOCKERFILES.items()}
    assert bases["cpu"] == bases["gpu"], bases


def test_copy_sources_exist_in_the_build_context(dockerfile):
    _, path, instrs = dockerfile
    copies = [a for op, a in instrs if op in ("COPY", "ADD")]
    assert copies, "nothing is copied into the image"
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        assert len(parts) >= 2, args
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{path.name}: COPY source {src} is not in the repository"


def test_project_is_installed_by_the_setup_script_with_the_matching_extra(dockerfile):
    extra, path, instrs = dockerfile
    runs = " ".join(a for op, a in instrs if op == "RUN")
    assert "bash deploy/setup.sh" in runs, f"{path.name} must install with deploy/setup.sh, as the README does"
    assert (REPO / "deploy" / "setup.sh").is_file()
    assert f"FLYWHEEL_EXTRA={extra}" in runs, f"{path.name}: setup.sh must run with FLYWHEEL_EXTRA={extra}"
    assert "pip install" not in runs, f"{path.name}: install through setup.sh only"
    workdir = [a for op, a in instrs if op == "WORKDIR"][-1]
    env = " ".join(a for op, a in instrs if op == "ENV")
    assert f"{workdir}/.venv/bin" in env, f"{path.name}: the setup venv's bin must be on PATH"


def test_local_venv_and_outputs_stay_out_of_the_context(dockerfile):
    _, path, _ = dockerfile
    patterns = dockerignore_patterns(path)
    for name in (".venv", ".git", "runs"):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{path.name}.dockerignore lets {name} in"


def test_default_command_names_an_existing_module(dockerfile):
    _, path, instrs = dockerfile
    cmd = [a for op, a in instrs if op in ("CMD", "ENTRYPOINT")]
    assert cmd, f"{path.name} has no CMD/ENTRYPOINT"
    argv = exec_form(cmd[-1])
    if argv[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(argv[2]) is not None, f"{path.name}: no module {argv[2]}"
    else:
        from services.cli import COMMANDS

        assert argv[0] == "flywheel" and argv[1] in COMMANDS, argv


def test_system_packages_cover_what_the_roles_need(dockerfile):
    _, path, instrs = dockerfile
    apt = " ".join(a for op, a in instrs if op == "RUN" and "apt-get install" in a)
    # libnuma1: vLLM's _C; g++: torch.compile; redis-server: Redis stream; wget: KubeRay's pod probes
    for pkg in ("libnuma1", "g++", "redis-server", "wget"):
        assert re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", apt), f"{path.name}: apt-get install lacks {pkg}"


def test_parser_handles_continuations_and_rejects_shell_form_cmd():
    instrs = parse_dockerfile("# c\nFROM x\nRUN a \\\n  # inner\n  && b\nCMD [\"python\", \"-m\", \"m\"]\n")
    assert instrs == [("FROM", "x"), ("RUN", "a    && b"), ("CMD", '["python", "-m", "m"]')]
    with pytest.raises(json.JSONDecodeError):
        exec_form("python -m services.cli")
