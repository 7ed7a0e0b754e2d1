"""Attention for padding-free packed rows: causal SDPA run sequence by sequence inside the row.

transformers keeps packed sequences apart by turning reset ``position_ids`` into a block-diagonal
``[row, row]`` mask, which costs row² memory and row² attention compute however short the sequences
are (sixteen 100-token sequences in one row do 16x the attention work of sixteen padded rows). This
attention implementation, registered with transformers as ``PACKED_SDPA``, takes the sequence lengths
of the row (``packed_seq_lens``, passed as a model keyword argument) and runs
``scaled_dot_product_attention(is_causal=True)`` on each sequence's slice of the row: the same numbers,
sum(len²) work and no mask. Without ``packed_seq_lens`` (right-padded rows, generation) it is plain
causal SDPA: a right-padded row's real tokens only ever attend to earlier real tokens, so no padding
mask is needed (transformers builds none for a custom implementation).
"""

from __future__ import annotations

PACKED_SDPA = "flywheel_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, packed_seq_lens=None, **kwargs):
    """``(batch, heads, tokens, dim)`` query/key/value -> ``((batch, tokens, heads, dim), None)``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("is_causal", None)
    if packed_seq_lens is None or len(packed_seq_lens) <= 1:
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)
    if query.shape[0] != 1 or sum(packed_seq_lens) != query.shape[2]:
        raise ValueError(f"packed_seq_lens {list(packed_seq_lens)[:8]}... do not cover a single row of "
                         f"{query.shape[2]} tokens (query shape {tuple(query.shape)})")
    lens = list(packed_seq_lens)  # split (not slicing): its backward is one cat, not a zero-filled row per sequence
    outs = [sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
            for q, k, v in zip(query.split(lens, dim=2), key.split(lens, dim=2), value.split(lens, dim=2))]
    return torch.cat(outs, dim=1), None


def register() -> str:
    """Register ``PACKED_SDPA`` with transformers (idempotent); returns its name for ``attn_implementation``."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    return PACKED_SDPA
