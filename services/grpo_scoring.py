"""The scoring sink between the rollout workers and the experience stream.

Rollout workers stream each finished group to a *sink* (any Ray actor with ``put(groups)``). The GRPO
job's sink is :class:`ScoringSink`: it scores every sample with the math verifier
(``rewards.ray_pool.VerifierPool``), writes the reward and its parts into the trajectory record and
forwards the scored groups to the experience stream (Ray queue or Redis Streams, both with
``put.remote(groups)``). ``score(groups)`` scores without forwarding (held-out evaluation).

Groups from a stage other than the current one (late arrivals after a stage switch) are counted and
dropped here, so they never reach the learner.

A verifier actor that dies is restarted by Ray and the pool retries its chunk with backoff
(:mod:`rewards.ray_pool`); meanwhile ``put`` blocks, so the rollout workers' pushes wait and nothing
is lost. After the pool's last try ``put`` raises ``VerifierUnavailableError`` naming the actor.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def reward_items(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verifier item per sample: completion text, gold answer, response length in tokens."""
    return [{"completion": s["text"], "gold": g["gold"], "response_tokens": len(s["completion_token_ids"])}
            for g in groups for s in g["samples"]]


def apply_rewards(groups: list[dict[str, Any]], rewards: list[Any]) -> list[dict[str, Any]]:
    """Write each ``rewards.Reward`` (in :func:`reward_items` order) into its sample dict."""
    it = iter(rewards)
    for g in groups:
        for s in g["samples"]:
            r = next(it)
            verdict = getattr(r, "verdict", None)
            s["reward"] = float(r.total)
            s["correct"] = bool(getattr(verdict, "correct", r.correctness > 0))
            s["reward_parts"] = {"correctness": float(r.correctness), "format": float(r.format),
                                 "overlong": float(r.overlong)}
    return groups


class ScoringSink:
    """Ray actor (created with ``ray.remote(ScoringSink)``): score groups, forward them to ``experience``."""

    def __init__(self, experience, reward_config: dict[str, Any], num_verifiers: int = 1,
                 verifier_cpus: float = 0.0, stage: int = 0):
        from rewards.config import RewardConfig
        from rewards.ray_pool import VerifierPool

        self.experience = experience
        self.reward_config = RewardConfig.model_validate(reward_config)
        self.pool = VerifierPool(num_verifiers, self.reward_config, num_cpus=verifier_cpus)
        self.stage = stage
        self.received = 0
        self.forwarded = 0
        self.dropped_other_stage = 0
        self.scored_samples = 0
        self.score_s = 0.0

    def set_stage(self, stage: int, reward_config: dict[str, Any]) -> None:
        """Switch stage: the overlong penalty follows the stage's response budget."""
        from rewards.config import RewardConfig

        self.stage = stage
        self.reward_config = RewardConfig.model_validate(reward_config)

    def score(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Scored copies of ``groups`` (rewards written into every sample)."""
        if not groups:
            return []
        t0 = time.perf_counter()
        from rewards.shaping import shape

        items = reward_items(groups)
        verdicts = [r.verdict for r in self.pool.score_batch(items)]
        # shape here, with the current stage's config (the overlong penalty follows the stage length)
        rewards = [shape(v, it["response_tokens"], self.reward_config) for v, it in zip(verdicts, items)]
        self.score_s += time.perf_counter() - t0
        self.scored_samples += len(rewards)
        return apply_rewards(groups, rewards)

    def put(self, groups: list[dict[str, Any]]) -> int:
        """Sink entry point of the rollout workers; returns how many groups were forwarded."""
        self.received += len(groups)
        keep = [g for g in groups if int(g.get("stage", 0)) == self.stage]
        self.dropped_other_stage += len(groups) - len(keep)
        if not keep:
            return 0
        scored = self.score(keep)
        import ray

        ray.get(self.experience.put.remote(scored))
        self.forwarded += len(scored)
        return len(scored)

    def verifier_actors(self) -> list[Any]:
        """Handles of the verifier actors (fault tests kill them)."""
        return list(self.pool.actors)

    def stats(self) -> dict[str, Any]:
        """Counters, plus the pool's verifier retries and recovery times (see ``VerifierPool.stats``)."""
        return {"received": self.received, "forwarded": self.forwarded,
                "dropped_other_stage": self.dropped_other_stage, "scored_samples": self.scored_samples,
                "score_s": self.score_s, **self.pool.stats()}
