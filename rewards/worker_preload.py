"""Imported once by the verifier forkserver (never by callers): loads sympy and runs one of each
comparison kind, so every forked worker starts with sympy's lazy imports and caches already warm
(a cold worker spends ~0.5 s of CPU on its first ``simplify``)."""

from rewards.config import VerifyConfig
from rewards.equivalence import compare

_cfg = VerifyConfig()
for _gold, _pred in (("x^2+2x+1", "(x+1)^2"), ("y=2x+1", "2x+1-y=0"), ("\\sqrt{2}", "1.414"),
                     ("(3,\\infty)", "x>3"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("2\\sin x\\cos x", "\\sin(2x)")):
    try:
        compare(_gold, _pred, _cfg)
    except Exception:  # noqa: BLE001 - a failed warm-up must never take the forkserver down
        pass

import rewards.shaping  # noqa: E402,F401 - whole-item scoring (extraction + shaping) runs in the workers too
import rewards.worker_pool  # noqa: E402,F401
