"""Fixtures of the GRPO job's integration tests: a tiny random Qwen3 checkpoint and one local Ray."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight Qwen3 + BPE tokenizer with a chat template (vLLM and transformers load it)."""
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("job-model") / "tiny-qwen3")


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray with 4 logical CPUs (learner 1 + rollout worker 1 + slack) for the whole session."""
    import ray

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()
