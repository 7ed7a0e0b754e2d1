"""Start-up rules of the rollout engines and service, without starting them: the context length comes from
the checkpoint and a larger one is refused naming both numbers,
an engine failure becomes one picklable line, the service refuses to start without a token, and health
tells an engine that died from one that serves."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys

import pytest
from pydantic import BaseModel, ValidationError


def _checkpoint(tmp_path, name: str = "ckpt", **cfg):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 512,
                                               "torch_dtype": "float32", **cfg}))
    return str(d)


def test_context_length_defaults_to_the_checkpoint_capped_by_the_request_limits(tmp_path):
    from rollout.config import RolloutConfig
    from services.rollout_server import RolloutServerConfig

    model = _checkpoint(tmp_path)
    assert RolloutConfig(model=model).context_len() == 512
    assert RolloutConfig(model=model).context_len(need=300) == 300
    assert RolloutServerConfig(model=model).rollout.max_model_len == 512  # 1024 + 1024 needed, 512 possible
    assert RolloutServerConfig(model=model, max_prompt_tokens=100, max_tokens=28).rollout.max_model_len == 128
    assert RolloutConfig(model="org/hub-id").context_len(need=700) == 700  # no local config: what is needed


def test_context_length_above_the_checkpoint_is_refused_naming_both_numbers(tmp_path):
    from rollout.config import RolloutConfig
    from services.config import ConfigError, load_config
    from services.rollout_server import RolloutServerConfig

    model = _checkpoint(tmp_path)
    with pytest.raises(ValidationError, match=r"max_model_len = 2048 exceeds .*\(512"):
        RolloutConfig(model=model, max_model_len=2048)
    with pytest.raises(ConfigError, match=r"max_model_len = 2048 exceeds .*\(512"):
        load_config(RolloutServerConfig, None, ["--model", model, "--rollout.max_model_len", "2048"])
    rope = _checkpoint(tmp_path, "rope", rope_scaling={"rope_type": "linear", "factor": 4.0})
    assert RolloutConfig(model=rope, max_model_len=2048).max_model_len == 2048  # 512 x 4


def test_dtype_is_described_with_the_checkpoints_own(tmp_path):
    from rollout.config import RolloutConfig

    model = _checkpoint(tmp_path)
    assert RolloutConfig(model=model).describe_dtype().startswith("auto (checkpoint: float32")
    assert RolloutConfig(model=model, dtype="bfloat16").describe_dtype() == "bfloat16"
    assert RolloutConfig(model="org/hub-id").describe_dtype() == "auto"


def test_engine_start_errors_are_one_picklable_line(tmp_path):
    from rollout.config import RolloutConfig
    from rollout.engine_startup import EngineStartError, precheck, start_error

    class Strict(BaseModel):
        max_model_len: int

    cfg = RolloutConfig(model=_checkpoint(tmp_path))
    try:
        Strict(max_model_len="lots")
    except ValidationError as e:
        err = start_error(e, cfg.model)
    assert isinstance(err, EngineStartError) and "\n" not in str(err) and "max_model_len" in str(err)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)  # Ray can send it back to the driver
    with pytest.raises(EngineStartError, match=r"rollout.max_model_len = 4096 exceeds .*\(512"):
        precheck(cfg, 4096)
    with pytest.raises(EngineStartError, match="kv_cache_gib"):
        precheck(cfg.model_copy(update={"kv_cache_gib": 4096}), 512)
    long = start_error(RuntimeError("x" * 5000 + "\nsecond line"), cfg.model)
    assert len(str(long)) <= 400 and "\n" not in str(long)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3

    return str(build_tiny_qwen3(tmp_path_factory.mktemp("tiny")))


def test_service_refuses_to_start_without_a_token(tiny, monkeypatch):
    from services.rollout_app import refuse
    from services.rollout_server import RolloutServerConfig

    monkeypatch.delenv("FLYWHEEL_ROLLOUT_TOKEN", raising=False)
    model = tiny
    assert "FLYWHEEL_ROLLOUT_TOKEN" in refuse(RolloutServerConfig(model=model))
    assert "--insecure_no_auth" in refuse(RolloutServerConfig(model=model))
    monkeypatch.setenv("FLYWHEEL_ROLLOUT_TOKEN", "t")
    assert refuse(RolloutServerConfig(model=model)) is None
    monkeypatch.delenv("FLYWHEEL_ROLLOUT_TOKEN")
    assert refuse(RolloutServerConfig(model=model, insecure_no_auth=True)) is None


def test_cli_without_token_exits_2_with_one_line(tiny):
    model = tiny
    env = {k: v for k, v in __import__("os").environ.items() if k != "FLYWHEEL_ROLLOUT_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "services.cli", "serve-rollout", "--model", model], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("flywheel serve-rollout:")]
    assert len(lines) == 1 and "--insecure_no_auth" in lines[0] and "Traceback" not in r.stderr


class _Fleet:
    """The fleet's state as FleetHealth reads it (ids, state, up(), poll(), workers' health())."""

    def __init__(self, engines: list[str]) -> None:
        self.engines = engines
        self.ids = [f"rollout-{i}" for i in range(len(engines))]
        self.state = ["up"] * len(engines)
        self.workers = list(range(len(engines)))
        self.gone = False

    def up(self):
        return [i for i, s in enumerate(self.state) if s == "up"]

    def poll(self):
        if self.gone:
            raise RuntimeError("every rollout worker died for good (rollout-0)")
        return 0


def _health(fleet):
    from services.rollout_health import FleetHealth

    h = FleetHealth(fleet)

    async def ask(i):
        return {"engine": fleet.engines[i]}

    h._health = ask
    return h


def test_health_reports_a_dead_engine_and_readiness():
    fleet = _Fleet(["ok", "ok"])
    h = _health(fleet)
    seen: list[bool] = []
    h.listeners.append(seen.append)
    asyncio.run(h.check())
    assert h.ready and h.healthy and h.snapshot()["status"] == "ok" and seen == [True]
    fleet.engines[0] = "vLLM engine died: EngineDeadError"
    asyncio.run(h.check())
    snap = h.snapshot()
    assert snap["status"] == "degraded" and h.ready
    assert snap["workers_detail"]["rollout-0"] == {"state": "unavailable", "engine": fleet.engines[0],
                                                   "last_error": fleet.engines[0]}
    assert not h.can_serve(0) and h.can_serve(1)
    fleet.engines[1] = "vLLM engine died: EngineDeadError"
    fleet.state[0] = "rejoining"  # Ray restarts worker 0
    asyncio.run(h.check())
    assert not h.ready and h.healthy and h.snapshot()["status"] == "unavailable" and seen == [True, False]
    fleet.gone = True
    asyncio.run(h.check())
    assert not h.healthy and "died for good" in h.snapshot()["error"] and h.fatal
