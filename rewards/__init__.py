"""Math answer verification and reward shaping for RLVR. Imports no torch, and nothing else of ours.

    from rewards import verify, score
    verify(r"... so the answer is \\boxed{\\frac{1}{2}}", "0.5").correct      # True
    verify("... so she has $x = 4$ apples.", "4", VerifyConfig(extraction="lenient")).correct  # True
    score(completion, gold, response_tokens=900, config=RewardConfig(max_response_tokens=1024,
          overlong_buffer_tokens=256)).total

``rewards.ray_pool.VerifierPool`` runs the same verifier as Ray actors (ray imported lazily).
"""

from rewards.config import RewardConfig, VerifyConfig
from rewards.extract import extract_answer, find_answer, gold_answer
from rewards.shaping import Reward, overlong_penalty, score, score_batch
from rewards.verifier import STATUSES, VERIFIER_VERSION, Verdict, verify, verify_batch

__all__ = [
    "STATUSES", "VERIFIER_VERSION", "Reward", "RewardConfig", "Verdict", "VerifyConfig", "extract_answer",
    "find_answer", "gold_answer", "overlong_penalty", "score", "score_batch", "verify", "verify_batch",
]
