"""The GRPO job's batch builder: which prompts to issue, and which returned groups a step trains on.

- **Staleness**: prompts are issued from the stage's data cursor under the bound of
  :func:`services.grpo_schedule.prompts_to_issue`, so no group is consumed more than ``max_staleness``
  versions after it was issued (``0`` = synchronous on-policy training).
- **Exactly once**: a returned group is accepted only while its prompt is in flight; another stage's late
  groups and duplicates (a dead worker's group that reached the sink before its prompt was re-queued, a
  pending prompt re-issued on resume whose first group was still in the Redis stream) are dropped.
- **Dynamic sampling** (DAPO): groups whose rewards are all equal carry no advantage and are skipped, up
  to ``max_draws_per_step * prompts_per_step`` draws per step (then they are kept, so a step always ends).
- :class:`StepCounters`: what one step drew, dropped and waited for, by name.

No Ray and no torch; the job moves prompts and groups in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from learner.batching import is_zero_variance
from services.grpo_data import PromptCursor
from services.grpo_schedule import prompts_to_issue


@dataclass
class StepCounters:
    """Counters of one training step (reset by :meth:`BatchBuilder.take`)."""

    drawn: int = 0
    """Groups drawn from the buffer for this step (kept or dropped)."""
    dropped: int = 0
    """Drawn groups skipped by dynamic sampling."""
    drawn_samples: int = 0
    """Samples of the drawn groups."""
    drawn_correct: int = 0
    """Correct samples of the drawn groups."""
    rollout_tokens: int = 0
    """Completion tokens of the groups accepted from the experience stream during this step."""
    worker_restarts: int = 0
    """Rollout workers rejoined during this step."""
    learner_wait_s: float = 0.0
    """Seconds the driver waited on the experience stream."""

    @property
    def rollout_accuracy(self) -> float:
        """Share of correct samples among everything drawn (dropped groups included)."""
        return self.drawn_correct / max(self.drawn_samples, 1)


class BatchBuilder:
    """Issues a stage's prompts and assembles its training batches (see the module docstring)."""

    def __init__(self, cursor: PromptCursor, prompts_per_step: int, max_staleness: int, *,
                 dynamic_sampling: bool, max_draws_per_step: int,
                 buffer: list[dict[str, Any]] | None = None, pending: list[dict[str, Any]] | None = None):
        self.cursor = cursor
        self.prompts_per_step = prompts_per_step
        self.max_staleness = max_staleness
        self.dynamic_sampling = dynamic_sampling
        self.max_draws = max_draws_per_step * prompts_per_step
        self.buffer: list[dict[str, Any]] = list(buffer or [])
        """Accepted groups not drawn into a batch yet."""
        self.in_flight: dict[str, dict[str, Any]] = {q["prompt_id"]: q for q in pending or []}
        """Prompts issued whose group has not come back, by prompt id."""
        self.batch: list[dict[str, Any]] = []
        self.counters = StepCounters()

    def issue(self) -> list[dict[str, Any]]:
        """The prompts to hand to the rollout workers now (possibly none); they count as in flight."""
        n = prompts_to_issue(self.prompts_per_step, self.max_staleness, len(self.batch), len(self.buffer),
                             len(self.in_flight))
        new = self.cursor.take(n) if n else []
        self.in_flight.update((q["prompt_id"], q) for q in new)
        return new

    def accept(self, groups: list[dict[str, Any]]) -> None:
        """Buffer the returned groups whose prompt is in flight; drop the rest (module docstring)."""
        for g in groups:
            if self.in_flight.pop(g["group_id"], None) is None:
                continue
            self.counters.rollout_tokens += sum(len(x["completion_token_ids"]) for x in g["samples"])
            self.buffer.append(g)

    def fill(self) -> bool:
        """Draw buffered groups into the batch (dynamic sampling applied); True when the batch is full."""
        c = self.counters
        while self.buffer and len(self.batch) < self.prompts_per_step:
            g = self.buffer.pop(0)
            c.drawn += 1
            c.drawn_samples += len(g["samples"])
            c.drawn_correct += sum(bool(x["correct"]) for x in g["samples"])
            if self.dynamic_sampling and is_zero_variance(g) and c.drawn <= self.max_draws:
                c.dropped += 1
                continue
            self.batch.append(g)
        return len(self.batch) >= self.prompts_per_step

    def take(self) -> tuple[list[dict[str, Any]], StepCounters]:
        """The full batch and its step's counters; both start afresh for the next step."""
        batch, counters = self.batch, self.counters
        self.batch, self.counters = [], StepCounters()
        return batch, counters

    @property
    def in_flight_prompts(self) -> list[dict[str, Any]]:
        """Prompts issued and not returned (a checkpoint stores them; a resume re-issues them)."""
        return list(self.in_flight.values())
