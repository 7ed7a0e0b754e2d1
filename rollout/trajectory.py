"""The trajectory record: what a rollout worker produces and the learner consumes.

Plain data (ints, floats, strings, lists) so it crosses Ray, Redis (msgpack) and gRPC alike;
nothing here is ever pickled across a trust boundary.

A :class:`Group` is one prompt with its ``n`` samples (GRPO needs whole groups to compute
advantages). Every completion token carries the behaviour log-prob the engine sampled it with and
the policy version of the weights that produced it, so the learner can bound staleness and apply
truncated importance sampling token by token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack


@dataclass
class Sample:
    completion_token_ids: list[int]
    logprobs: list[float]
    """Behaviour log-prob of every completion token, as the engine sampled it."""
    versions: list[int]
    """Policy version that produced every completion token."""
    finish_reason: str
    """``stop`` | ``length`` | ``abort``."""
    text: str = ""
    generation_s: float = 0.0
    reward: float = 0.0
    reward_parts: dict[str, float] = field(default_factory=dict)
    """Named parts of the reward (``correctness``, ``format``, ``overlong``) and verdict details."""
    correct: bool = False

    def __post_init__(self) -> None:
        n = len(self.completion_token_ids)
        if len(self.logprobs) != n or len(self.versions) != n:
            raise ValueError(
                f"sample has {n} tokens but {len(self.logprobs)} logprobs and {len(self.versions)} versions"
            )

    @property
    def min_version(self) -> int:
        return min(self.versions) if self.versions else -1


@dataclass
class Group:
    group_id: str
    prompt_token_ids: list[int]
    samples: list[Sample]
    prompt: str = ""
    gold: str = ""
    stage: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Group:
        d = dict(d)
        d["samples"] = [s if isinstance(s, Sample) else Sample(**s) for s in d["samples"]]
        return cls(**d)

    def to_msgpack(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def from_msgpack(cls, data: bytes) -> Group:
        return cls.from_dict(msgpack.unpackb(data, raw=False))
