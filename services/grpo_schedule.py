"""Stage scheduling for the multi-stage GRPO job: pure functions, no Ray, no torch.

- :class:`JobProgress`: where the job is (stage, step in stage, global step, weight version, the
  stage's reward history, data position), JSON round-trip so checkpoints carry it.
- :func:`plateau_reached`: the reward-plateau stop rule (moving average that stopped improving).
- :func:`stage_stop_reason`: why a stage is over (step budget, plateau) or ``None``.
- :func:`prompts_to_issue`: staleness-bounded prompt issuing. With ``max_staleness = k`` the driver
  keeps at most ``(k + 1) * prompts_per_step`` groups in flight or buffered, so a group issued while
  the learner is at version ``v`` is consumed by step ``v + k`` at the latest; ``k = 0`` is the
  synchronous on-policy mode (nothing is in flight while the learner updates), same code path.
- :func:`staleness_histogram`: how many versions behind the learner each consumed sample was.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence


@dataclass
class JobProgress:
    stage: int = 0
    """Index of the stage being run (or the next one to run once ``stage_done``)."""
    step_in_stage: int = 0
    """Optimizer steps completed in the current stage."""
    global_step: int = 0
    """Optimizer steps completed over all stages."""
    version: int = 0
    """Weight version the learner holds (0 = the starting checkpoint; +1 per optimizer step)."""
    stage_rewards: list[float] = field(default_factory=list)
    """Batch reward mean of every step of the current stage (input of the plateau rule)."""
    data_position: int = 0
    """Prompts of the current stage's dataset issued so far (the data cursor)."""
    stage_done: bool = False
    """The current stage finished training; its evaluation/export may still be pending."""
    finished: bool = False
    """All stages done."""
    stop_reasons: list[str] = field(default_factory=list)
    """Why each completed stage stopped (``steps`` or ``plateau``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobProgress:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def record_step(self, reward_mean: float, version: int | None = None) -> None:
        """One training step done: weights move to ``version`` (default: version + 1)."""
        self.step_in_stage += 1
        self.global_step += 1
        self.version = self.version + 1 if version is None else int(version)
        self.stage_rewards.append(float(reward_mean))

    def finish_stage(self, reason: str, num_stages: int) -> None:
        self.stop_reasons.append(reason)
        self.stage_done = True
        if self.stage + 1 >= num_stages:
            self.finished = True

    def next_stage(self) -> None:
        """Move to the next stage; weights and version carry over, the data cursor restarts."""
        self.stage += 1
        self.step_in_stage = 0
        self.stage_rewards = []
        self.data_position = 0
        self.stage_done = False


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing means: entry ``i`` is the mean of ``values[i - window + 1 : i + 1]`` (needs a full window)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return [sum(values[i - window + 1:i + 1]) / window for i in range(window - 1, len(values))]


def plateau_reached(rewards: Sequence[float], window: int, patience: int, min_delta: float,
                    min_steps: int = 0) -> bool:
    """True when the ``window``-step moving average of the reward has not beaten its best earlier value
    by more than ``min_delta`` for the last ``patience`` steps (and at least ``min_steps`` steps ran).

    Example: window 2, patience 2, rewards [0.1, 0.5, 0.5, 0.5, 0.5]: averages [0.3, 0.5, 0.5, 0.5];
    the best (0.5) was set at step 2 and steps 3 and 4 did not improve on it -> plateau.
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if len(rewards) < max(min_steps, window + patience):
        return False
    avg = moving_average(rewards, window)
    best_before = max(avg[:-patience])
    return max(avg[-patience:]) <= best_before + min_delta


def stage_stop_reason(steps_done: int, max_steps: int, rewards: Sequence[float],
                      plateau: dict[str, Any] | None) -> str | None:
    """``"steps"`` when the step budget is spent, ``"plateau"`` when the plateau rule fires, else None.

    ``plateau`` holds ``window``, ``patience``, ``min_delta`` and ``min_steps`` (a PlateauConfig dump).
    """
    if steps_done >= max_steps:
        return "steps"
    if plateau and plateau_reached(rewards, plateau["window"], plateau["patience"], plateau["min_delta"],
                                   plateau.get("min_steps", 0)):
        return "plateau"
    return None


def prompts_to_issue(prompts_per_step: int, max_staleness: int, accepted_in_batch: int, buffered: int,
                     in_flight: int) -> int:
    """How many new prompts the driver may hand to the rollout workers now.

    ``accepted_in_batch``: groups already in the batch being assembled; ``buffered``: groups returned
    but not consumed yet; ``in_flight``: prompts issued whose group has not come back. The driver keeps
    ``in_flight + buffered`` at the number of groups the learner will still consume within
    ``max_staleness`` versions: the rest of this batch plus ``max_staleness`` whole batches. Groups
    dropped by dynamic sampling never count as buffered, so their prompts are replaced.
    """
    if min(prompts_per_step, max_staleness + 1, accepted_in_batch + 1, buffered + 1, in_flight + 1) < 1:
        raise ValueError("counts must be >= 0 and prompts_per_step >= 1")
    wanted = (prompts_per_step - accepted_in_batch) + max_staleness * prompts_per_step
    return max(0, wanted - buffered - in_flight)


def sample_staleness(versions: Sequence[int], learner_version: int) -> int:
    """Versions between the learner and the oldest weights that produced a token of this sample."""
    return max(0, learner_version - min(versions)) if versions else 0


def staleness_histogram(groups: Iterable[dict[str, Any]], learner_version: int) -> dict[int, int]:
    """``{staleness: number of samples}`` over the samples of ``groups`` (Group dicts)."""
    counts: Counter[int] = Counter()
    for g in groups:
        for s in g["samples"]:
            counts[sample_staleness(s["versions"], learner_version)] += 1
    return dict(sorted(counts.items()))


class IdleClock:
    """Time a resource spent idle, from timestamped state changes: ``mark(busy, now)`` at every change.

    The job marks the rollout side busy while it has prompts in flight, so in synchronous mode the
    whole training step counts as rollout idle time and in asynchronous mode only the gaps do.
    """

    def __init__(self, now: float):
        self.t = now
        self.busy = False
        self.idle_s = 0.0

    def mark(self, busy: bool, now: float) -> None:
        if not self.busy:
            self.idle_s += max(0.0, now - self.t)
        self.t = now
        self.busy = busy

    def take(self, now: float) -> float:
        """Idle seconds since the last ``take`` (the state carries on)."""
        self.mark(self.busy, now)
        idle, self.idle_s = self.idle_s, 0.0
        return idle
