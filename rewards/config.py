"""Typed configuration of the verifier (``VerifyConfig``) and of reward shaping (``RewardConfig``).

Pure pydantic: imports nothing heavy, so the CLI and the services can load it at start-up.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Extraction = Literal["marked", "lenient", "answer"]
"""Where the answer is found in a completion (see ``VerifyConfig.extraction``)."""


class VerifyConfig(BaseModel):
    """How answers are extracted and compared, and the safety limits applied before sympy runs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    extraction: Extraction = "marked"
    """Where the answer is read: ``marked`` (``\\boxed{}``, answer lines, ``####``), ``lenient`` (the whole
    completion, as math-verify searches it: boxed, answer cues, the last LaTeX math, the last expression),
    or ``answer`` (the completion is the answer, already extracted upstream)."""
    timeout_s: float = Field(2.0, gt=0, le=60)
    """Hard time limit per item; enforced by killing the worker process that runs it."""
    last_number_fallback: bool = False
    """Take the last number in the completion when no marked answer is found (causes false positives)."""
    rel_tol: float = Field(1e-6, ge=0, le=0.1)
    """Relative precision of a decimal that stands for an irrational or non-terminating value:
    ``6.283185`` matches ``2\\pi`` (|a-b| <= rel_tol*|b|), ``6.28`` does not. Nothing else gets a tolerance."""
    abs_tol: float = Field(0.0, ge=0, le=0.1)
    """Absolute tolerance for the same decimals: ``|a-b| <= max(rel_tol*|b|, abs_tol)``."""
    accept_rounded_decimals: bool = False
    """Also accept such a decimal when it is the value correctly rounded to its own digits, with at least
    two (``0.33`` for ``1/3``, ``3.14`` for ``\\pi``): looser, and a policy can learn to exploit it."""
    max_completion_chars: int = Field(200_000, ge=100, le=10_000_000)
    """Completions longer than this get status ``error`` without being read."""
    max_answer_chars: int = Field(1_000, ge=10, le=100_000)
    """Extracted answers / gold answers longer than this are not parsed symbolically."""
    max_depth: int = Field(30, ge=2, le=500)
    """Maximum nesting depth of braces/brackets/parentheses in an answer before parsing."""
    max_exponent: int = Field(1_000, ge=1, le=10**6)
    """Largest absolute exponent (of integer powers, scientific notation, factorial argument) allowed."""
    max_integer_bits: int = Field(2**28, ge=1024, le=2**34)
    """Largest exact power a parsed answer may build (bits of ``a^n`` for rational ``a``; 2^28 bits = 32 MiB)."""
    max_power_tower: int = Field(3, ge=1, le=10)
    """Longest chain of powers allowed (``a^b`` is 1, ``a^{b^{c}}`` is 2); taller ones are refused, not evaluated."""
    num_workers: int = Field(2, ge=1, le=256)
    """Worker processes of the in-process pool that runs the symbolic comparisons."""


class RewardConfig(BaseModel):
    """Reward shaping: correctness, an optional format reward and the DAPO overlong soft penalty."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    """Answer extraction and comparison settings."""
    correct_reward: float = 1.0
    """Correctness reward of a correct answer."""
    wrong_reward: float = 0.0
    """Correctness reward of a wrong, missing or unverifiable answer (DAPO uses -1.0)."""
    format_weight: float = Field(0.0, ge=0, le=10)
    """Weight of the format reward (1 when the answer is marked, ``\\boxed{}``/``####``/``Answer:``); 0 = off."""
    max_response_tokens: int | None = Field(None, ge=1)
    """DAPO L_max: responses longer than this get the full -1 penalty; None turns the penalty off."""
    overlong_buffer_tokens: int = Field(0, ge=0)
    """DAPO L_cache: the soft-penalty band just below L_max; 0 = a hard -1 beyond L_max only."""
    overlong_weight: float = Field(1.0, ge=0, le=10)
    """Scale of the overlong penalty (1 = DAPO)."""

    @model_validator(mode="after")
    def _buffer_fits(self) -> RewardConfig:
        if self.max_response_tokens is not None and self.overlong_buffer_tokens > self.max_response_tokens:
            raise ValueError(f"overlong_buffer_tokens={self.overlong_buffer_tokens} exceeds "
                             f"max_response_tokens={self.max_response_tokens}")
        return self
