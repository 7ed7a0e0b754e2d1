"""The RL learner: GRPO-family losses, batch shaping, the FSDP2 training actors and the experience stream.

``config`` (no torch) -> ``losses`` / ``batching`` (pure torch functions) -> ``actor`` (``Learner``: Ray
actors with FSDP2, checkpoints, HF export) and ``experience`` (Ray queue or Redis Streams). See
docs/learner.md.
"""
