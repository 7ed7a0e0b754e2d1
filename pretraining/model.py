"""Model: Qwen3 (RMSNorm, QK-norm, SwiGLU, RoPE, tied embeddings) from named sizes.

``Qwen3ForCausalLM`` is a transformers architecture that vLLM serves natively, so a checkpoint written
by :mod:`pretraining.checkpoint` loads unchanged in both. ``tiny`` (~1M parameters) is the CPU default;
the real sizes match the published Qwen3 shapes. Every size keeps ``head_dim >= 32`` (vLLM's CPU
attention rejects 16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelSize:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(128, 384, 4, 4, 2, 32, 1024),  # ~0.9M params + embeddings: the CPU default
    "mini": ModelSize(256, 768, 6, 8, 4, 32, 2048),  # ~5M
    "small": ModelSize(512, 1536, 8, 8, 4, 64, 4096),  # ~25M
    "qwen3-0.6b": ModelSize(1024, 3072, 28, 16, 8, 128, 40960, 1_000_000.0),
    "qwen3-1.7b": ModelSize(2048, 6144, 28, 16, 8, 128, 40960, 1_000_000.0),
    "qwen3-4b": ModelSize(2560, 9728, 36, 32, 8, 128, 40960, 1_000_000.0),
}


def model_config(size: str, vocab_size: int, *, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, bos_token_id: int | None = None):
    """The ``Qwen3Config`` of a named size."""
    from transformers import Qwen3Config

    if size not in SIZES:
        raise ValueError(f"model size {size!r}: expected one of {sorted(SIZES)}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size}: must be >= 2")
    s = asdict(SIZES[size])
    rope_theta = s.pop("rope_theta")
    return Qwen3Config(
        vocab_size=vocab_size, **s, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False, use_cache=True,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
    )


def build_model(size: str, vocab_size: int, *, seed: int = 0, eos_token_id=None, pad_token_id=None,
                bos_token_id=None):
    """A freshly initialised ``Qwen3ForCausalLM`` (float32, sdpa attention) of a named size."""
    import torch
    from transformers import Qwen3ForCausalLM

    cfg = model_config(size, vocab_size, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                       bos_token_id=bos_token_id)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(cfg)


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
