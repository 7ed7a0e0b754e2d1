"""``flywheel serve-rollout --model DIR`` on a checkpoint as transformers writes one: a LlamaForCausalLM built
with transformers' own ``LlamaConfig`` (random init, bfloat16 as Llama checkpoints ship, hidden 128, 4
heads, ``max_position_embeddings`` 512) plus its own tokenizer and chat template, and no flag about the
model: the context length (512) comes from the checkpoint. Driven by the real ``openai`` client,
whose very first request is ``{"prompt": "Ann", "max_tokens": 4}`` (a one-token prompt: the request that
used to kill a bfloat16 engine on AMX CPUs). An engine that cannot start stops the command with one line
naming the cause, never a pickling error. An engine that dies while serving is reported by ``/healthz`` and
``/readyz``, answered with 503 meanwhile, and restarted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, terminate

REPO = Path(__file__).resolve().parents[3]
TOKEN = "llama-test-token"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from tests.fixtures.tiny_checkpoint import build_family

    return build_family("llama", tmp_path_factory.mktemp("llama") / "ckpt", hidden_size=128, num_heads=4,
                        max_position_embeddings=512)


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
            "FLYWHEEL_ROLLOUT_TOKEN": TOKEN, "RAY_TMPDIR": str(tmp), "RAY_raylet_start_wait_time_s": "180"}


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve-rollout exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise AssertionError(f"not ready after {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def server(llama, tmp_path_factory):
    """``flywheel serve-rollout --model DIR`` (ports aside: other tests share this machine) as a subprocess."""
    tmp = tmp_path_factory.mktemp("serve")
    http = free_port()
    log = tmp / "serve.log"
    cmd = [sys.executable, "-m", "services.cli", "serve-rollout", "--model", str(llama),
           "--http_port", str(http), "--grpc_port", str(free_port())]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp), stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{http}"
    state = {"proc": proc, "url": url, "log": log}
    try:
        _wait_ready(url, proc, log)
        yield state
    finally:
        terminate(proc, timeout=120)
        state["exit"] = proc.returncode


def test_serve_rollout_on_a_transformers_llama_with_no_other_flag(server):
    from openai import OpenAI

    url = server["url"]
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    first = client.completions.create(model="ckpt", prompt="Ann", max_tokens=4)  # the very first request
    assert first.choices[0].finish_reason in ("length", "stop") and first.usage.completion_tokens >= 1
    chat = client.chat.completions.create(model="ckpt", messages=[{"role": "user", "content": "Bob has 3 pens."}],
                                          max_tokens=6)
    assert chat.choices[0].message.role == "assistant"
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="ckpt", prompt="Cleo has", max_tokens=5, stream=True, temperature=0.0) if c.choices)
    again = client.completions.create(model="ckpt", prompt="Cleo has", max_tokens=5, temperature=0.0)
    assert again.choices[0].text == text
    too_long = httpx.post(url + "/v1/completions", json={"prompt": "Ann", "max_tokens": 1000}, timeout=60)
    assert too_long.status_code == 400 and "512" in too_long.json()["error"]["message"]  # the checkpoint's
    health = httpx.get(url + "/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["workers"] == 1
    assert httpx.post(url + "/v1/weights", json={"version": 1, "path": "/x", "sha256": "0" * 64},
                      timeout=30).status_code == 401
    log = server["log"].read_text()
    assert "checkpoint: bfloat16" in log and "max_model_len 512" in log


@pytest.mark.slow  # a second engine start (1-3 min on 2 cores); the health states themselves are unit-tested
def test_a_dead_engine_is_reported_and_restarted(server):
    """Kill the engine's model-runner process: health says so, requests get 503 (never 500), Ray restarts the
    worker with a fresh engine, and the service serves again."""
    import psutil

    url = server["url"]
    tree = psutil.Process(server["proc"].pid).children(recursive=True)
    runners = [p for p in tree if "VLLM::Worker" in " ".join(p.cmdline() or [p.name()]) or p.name() == "VLLM::Worker"]
    assert runners, sorted({p.name() for p in tree})
    for p in runners:
        p.kill()
    seen: set[int] = set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # wait for the death to be seen, then for the restart
        r = httpx.post(url + "/v1/completions", json={"prompt": "Ann", "max_tokens": 2}, timeout=120)
        seen.add(r.status_code)
        assert r.status_code in (200, 503), r.text
        ready = httpx.get(url + "/readyz", timeout=30)
        if 503 in seen and ready.status_code == 200 and r.status_code == 200:
            break
        if ready.status_code == 503:
            body = ready.json()
            assert body["status"] in ("unavailable", "degraded") and body["workers_detail"], body
        time.sleep(1)
    assert 503 in seen and 200 in seen, seen
    health = httpx.get(url + "/healthz", timeout=30).json()
    assert health["status"] == "ok" and "last_error" in health["workers_detail"]["rollout-0"], health
    ok = httpx.post(url + "/v1/completions", json={"prompt": "Ann", "max_tokens": 4}, timeout=120)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_an_engine_that_cannot_start_is_one_line_and_exit_2(llama, tmp_path_factory):
    cmd = [sys.executable, "-m", "services.cli", "serve-rollout", "--model", str(llama), "--http_port",
           str(free_port()), "--grpc_port", str(free_port()), "--rollout.kv_cache_gib", "4000"]
    tmp = tmp_path_factory.mktemp("bad")  # short: Ray's socket paths must stay under 108 bytes
    r = subprocess.run(cmd, cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=900)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("flywheel serve-rollout:")]
    assert len(lines) == 1 and "kv_cache_gib = 4000" in lines[0], r.stderr[-3000:]
    assert "pickle" not in r.stderr


def test_flywheel_eval_engine_config_error_is_one_line(llama):
    """``flywheel eval`` builds its own ``vllm.LLM``: vLLM's pydantic refusal comes back as one line."""
    import pickle

    from pretraining.evaluate import make_llm
    from rollout.engine_startup import EngineStartError

    with pytest.raises(EngineStartError) as e:
        make_llm(str(llama), max_model_len=4096)
    msg = str(e.value)
    assert "\n" not in msg and "4096" in msg and "512" in msg, msg
    assert str(pickle.loads(pickle.dumps(e.value))) == msg
