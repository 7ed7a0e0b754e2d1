"""The job's scoring sink on a real local Ray: real verifier actors, real experience queue."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")


def _group(gid: str, texts: list[str], gold: str, stage: int = 0) -> dict:
    from rollout.trajectory import Group, Sample

    samples = [Sample(completion_token_ids=list(range(5)), logprobs=[-1.0] * 5, versions=[0] * 5,
                      finish_reason="stop", text=t) for t in texts]
    return Group(group_id=gid, prompt_token_ids=[1, 2], samples=samples, gold=gold, stage=stage).to_dict()


def test_sink_scores_and_forwards_only_the_current_stage(local_ray):
    from learner.config import ExperienceConfig
    from learner.experience import make_stream
    from rewards.config import RewardConfig
    from services.grpo_scoring import ScoringSink

    stream = make_stream(ExperienceConfig())
    sink = ray.remote(num_cpus=0)(ScoringSink).remote(stream.sink, RewardConfig().model_dump(), 1, 0.0, 0)
    groups = [_group("a", ["so \\boxed{4}", "I think \\boxed{5}"], "4"),
              _group("b", ["\\boxed{7}", "\\boxed{7}"], "7"),
              _group("late", ["\\boxed{1}", "\\boxed{1}"], "1", stage=1)]
    assert ray.get(sink.put.remote(groups)) == 2
    got = {g["group_id"]: g for g in stream.get(3, timeout=5.0)}
    assert set(got) == {"a", "b"}
    assert [s["correct"] for s in got["a"]["samples"]] == [True, False]
    assert [s["reward"] for s in got["a"]["samples"]] == [1.0, 0.0]
    assert got["a"]["samples"][0]["reward_parts"]["correctness"] == 1.0
    assert all(s["correct"] for s in got["b"]["samples"])
    stats = ray.get(sink.stats.remote())
    assert (stats["received"], stats["forwarded"], stats["dropped_other_stage"]) == (3, 2, 1)

    # next stage: the overlong penalty follows the stage's response budget (5 tokens > L_max 4 -> -1)
    ray.get(sink.set_stage.remote(1, RewardConfig(max_response_tokens=4, overlong_buffer_tokens=2).model_dump()))
    scored = ray.get(sink.score.remote([_group("c", ["\\boxed{3}"], "3", stage=1)]))
    s = scored[0]["samples"][0]
    assert s["correct"] and s["reward_parts"]["overlong"] == -1.0 and s["reward"] == pytest.approx(0.0)
    stream.close()
