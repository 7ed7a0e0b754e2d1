"""The GRPO job in-process on a local Ray with real vLLM workers, learner, verifier actors and queue.

- synchronous mode (``loss.max_staleness: 0``) trains strictly on-policy: every sample's staleness is 0;
- a run stopped mid-stage (``stop_after_steps``) resumes from its checkpoint: the step count, weight
  version and data position continue where they stopped, nothing is repeated; both runs send weights by
  the collective transport, the resumed learner's included (a new sender and group, versions going on).
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack

from services.config import load_config
from services.job_config import GRPOJobConfig

REPO = Path(__file__).resolve().parents[3]


def _cfg(model, out, *extra: str, steps: int = 2) -> GRPOJobConfig:
    return load_config(GRPOJobConfig, REPO / "configs" / "grpo_test.yaml", [
        "--model", str(model), "--output_dir", str(out), "--eval.enabled", "false",
        "--stages", "[{name: only, difficulties: [1], num_problems: 64, max_response_tokens: 16, group_size: 4,"
                    f" prompts_per_step: 4, steps: {steps}}}]", *extra])


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _extra(out: Path) -> dict:
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())["dir"]
    return msgpack.unpackb((out / "checkpoints" / latest / "extra.msgpack").read_bytes(), raw=False)


def test_sync_mode_is_on_policy_and_resumes_mid_stage(local_ray, tiny_model, tmp_path):
    from services.grpo_job import GRPOJob

    out = tmp_path / "sync"
    # run 1: stop after one step (checkpointed), as a preempted job would
    collective = ("--rollout.weight_transport", "collective")
    assert GRPOJob(_cfg(tiny_model, out, "--loss.max_staleness", "0", "--stop_after_steps", "1", *collective)).run() == 0
    rows = _rows(out)
    assert [r["global_step"] for r in rows] == [1]
    first = _extra(out)["progress"]
    assert (first["stage"], first["step_in_stage"], first["version"]) == (0, 1, 1)
    assert first["data_position"] >= 4 and not first["finished"]

    # run 2: the same command resumes and finishes the stage
    assert GRPOJob(_cfg(tiny_model, out, "--loss.max_staleness", "0", *collective)).run() == 0
    rows = _rows(out)
    assert [r["global_step"] for r in rows] == [1, 2]
    assert [r["version"] for r in rows] == [1, 2]
    # each step's update landed by broadcast before the next step (sync mode), from either run's learner
    assert [(r["weight_update_version"], r["weight_collective"], r["weight_broadcast_workers"]) for r in rows] == \
        [(1, 1.0, 1.0), (2, 1.0, 1.0)]
    for r in rows:
        # on-policy: every sample was generated entirely by the weights the learner held
        assert set(map(int, r["staleness_histogram"])) == {0}, r["staleness_histogram"]
        assert r["samples"] == 16
    final = _extra(out)["progress"]
    assert final["finished"] and final["global_step"] == 2
    assert final["data_position"] >= first["data_position"] + 4  # data continued, not restarted
    assert (out / "only_hf" / "model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text())["stages"] == ["steps"]


def test_redis_experience_backend_acknowledges_what_the_checkpoint_covers(local_ray, tiny_model, tmp_path,
                                                                          redis_url):
    """Asynchronous mode through Redis Streams: the job trains, and after its final checkpoint nothing
    delivered is left unacknowledged (a crash before it would have re-delivered those groups)."""
    import redis

    from services.grpo_job import GRPOJob

    out = tmp_path / "redis"
    stream = f"test:grpo:{tmp_path.name}"
    cfg = _cfg(tiny_model, out, "--experience.backend", "redis", "--experience.redis_url", redis_url,
               "--experience.stream", stream, "--loss.max_staleness", "1", steps=1)
    assert GRPOJob(cfg).run() == 0
    rows = _rows(out)
    assert [r["global_step"] for r in rows] == [1] and rows[0]["samples"] == 16
    client = redis.Redis.from_url(redis_url)
    assert client.xpending(stream, "learner")["pending"] == 0
