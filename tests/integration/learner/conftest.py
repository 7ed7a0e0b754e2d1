"""Fixtures of the learner's integration tests: a tiny random Qwen3 HF checkpoint and rollout groups."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rollout.trajectory import Group, Sample

VOCAB = 256


def make_tiny_qwen3(path: Path, seed: int = 0) -> Path:
    """A 2-layer random Qwen3 (head_dim 32, vocab 256, tied embeddings) with a byte-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(hidden_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                      num_hidden_layers=2, intermediate_size=128, vocab_size=VOCAB, tie_word_embeddings=True,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    Qwen3ForCausalLM(cfg).save_pretrained(str(path))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


def make_groups(n_groups: int, group_size: int, seed: int = 0, version: int = 0,
                prompt_len: tuple[int, int] = (3, 8), completion_len: tuple[int, int] = (2, 12)) -> list[dict]:
    """Random groups with varied lengths and rewards (plain dicts, as rollout workers send them)."""
    rng = random.Random(seed)
    groups = []
    for g in range(n_groups):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(*prompt_len))]
        samples = []
        for _ in range(group_size):
            n = rng.randint(*completion_len)
            samples.append(Sample(completion_token_ids=[rng.randrange(3, VOCAB) for _ in range(n)],
                                  logprobs=[-rng.uniform(4.0, 7.0) for _ in range(n)], versions=[version] * n,
                                  finish_reason="stop", reward=float(rng.random() < 0.5) + rng.random() * 0.1))
        groups.append(Group(group_id=f"g{seed}-{g}", prompt_token_ids=prompt, samples=samples).to_dict())
    return groups


@pytest.fixture(scope="session")
def groups_factory():
    """``make_groups`` as a fixture (test modules here are not importable as a package)."""
    return make_groups


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the learner tests (reused if one is already up in this process)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    if started:
        ray.shutdown()
