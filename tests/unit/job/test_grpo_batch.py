"""The GRPO job's batch builder: staleness-bounded issuing, exactly-once acceptance, dynamic sampling."""

from __future__ import annotations

from rollout.trajectory import Group, Sample
from services.grpo_batch import BatchBuilder
from services.grpo_data import PromptCursor


def prompts(n: int) -> list[dict]:
    return [{"prompt_id": f"p{i}", "prompt_token_ids": [1, 2], "gold": "1"} for i in range(n)]


def group(prompt_id: str, rewards: list[float], tokens: int = 3) -> dict:
    samples = [Sample([5] * tokens, [-0.1] * tokens, [0] * tokens, "stop", reward=r, correct=r > 0) for r in rewards]
    return Group(group_id=prompt_id, prompt_token_ids=[1, 2], samples=samples).to_dict()


def builder(n_prompts=20, per_step=2, staleness=1, dynamic=True, max_draws=2, **kw) -> BatchBuilder:
    return BatchBuilder(PromptCursor(prompts(n_prompts)), per_step, staleness, dynamic_sampling=dynamic,
                        max_draws_per_step=max_draws, **kw)


def test_issuing_stops_at_the_staleness_bound_and_resumes_as_groups_are_consumed():
    b = builder(per_step=2, staleness=1)
    first = b.issue()
    assert [q["prompt_id"] for q in first] == ["p0", "p1", "p2", "p3"]  # this batch + one batch ahead
    assert b.issue() == []
    b.accept([group("p0", [0, 1]), group("p1", [1, 0])])
    assert b.fill() and b.issue() == []  # buffered + in flight still cover the bound
    b.take()
    assert [q["prompt_id"] for q in b.issue()] == ["p4", "p5"]


def test_synchronous_mode_issues_one_batch_at_a_time():
    b = builder(per_step=3, staleness=0)
    assert len(b.issue()) == 3 and b.issue() == []


def test_a_group_is_accepted_once_and_only_while_its_prompt_is_in_flight():
    b = builder()
    b.issue()
    b.accept([group("p0", [0, 1], tokens=4), group("p0", [0, 1]), group("other-stage", [0, 1])])
    assert [g["group_id"] for g in b.buffer] == ["p0"]
    assert b.counters.rollout_tokens == 8
    assert "p0" not in b.in_flight and "p1" in b.in_flight


def test_dynamic_sampling_skips_zero_variance_groups_until_the_draw_cap():
    b = builder(per_step=2, staleness=3, max_draws=2)  # at most 4 draws may be skipped per step
    b.issue()
    b.accept([group(f"p{i}", [1, 1]) for i in range(5)] + [group("p5", [0, 1])])
    assert b.fill()
    batch, c = b.take()
    assert c.drawn == 6 and c.dropped == 4  # four skipped, the fifth kept because the cap was reached
    assert [g["group_id"] for g in batch] == ["p4", "p5"]
    assert c.rollout_accuracy == (10 + 1) / 12
    assert b.counters.drawn == 0 and b.batch == []  # the next step starts afresh


def test_without_dynamic_sampling_every_group_is_trained():
    b = builder(per_step=2, dynamic=False)
    b.issue()
    b.accept([group("p0", [1, 1]), group("p1", [0, 0])])
    assert b.fill()
    batch, c = b.take()
    assert len(batch) == 2 and c.dropped == 0


def test_resume_state_round_trips():
    pending = prompts(3)[1:]
    b = builder(buffer=[group("p0", [0, 1])], pending=pending)
    assert b.in_flight_prompts == pending and len(b.buffer) == 1
    b.accept([group("p1", [0, 1])])
    assert [q["prompt_id"] for q in b.in_flight_prompts] == ["p2"]
