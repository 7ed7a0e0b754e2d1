"""The model: named sizes, vLLM-compatible head_dim, and intra-document masking of packed rows."""

from __future__ import annotations

import pytest
import torch

from pretraining.model import SIZES, build_model, count_parameters
from pretraining.packing import collate, pack_stream


def test_tiny_is_about_one_million_parameters_and_every_size_has_head_dim_at_least_32():
    assert 0.5e6 < count_parameters(build_model("tiny", 512)) < 1.5e6
    for name, s in SIZES.items():
        assert s.head_dim >= 32, name
        assert s.num_attention_heads % s.num_key_value_heads == 0, name


def test_unknown_size_is_a_clear_error():
    with pytest.raises(ValueError, match="model size 'huge'"):
        build_model("huge", 512)


def _docs(vocab: int):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in (7, 12, 5, 8)]


def test_packed_forward_equals_unpacked_per_document_forward(tiny_model):
    # use_cache=False matters: with a KV cache transformers does not derive the document mask from the
    # position resets (the trainer always passes it).
    docs = _docs(tiny_model.config.vocab_size)
    rows = pack_stream(docs, seq_len=32, pad_id=0)  # 32 tokens: all four documents in one row
    assert len(rows) == 1
    batch = collate(rows, packed=True)
    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for d in docs:
            alone = tiny_model(input_ids=torch.tensor([d])).logits[0]
            torch.testing.assert_close(packed[start:start + len(d)], alone, atol=1e-5, rtol=0)
            start += len(d)


def test_a_token_never_attends_across_documents(tiny_model):
    docs = _docs(tiny_model.config.vocab_size)
    batch = collate(pack_stream(docs, 32, 0), packed=True)
    changed = batch["input_ids"].clone()
    changed[0, :7] = (changed[0, :7] + 1) % tiny_model.config.vocab_size  # rewrite document 1 only
    with torch.no_grad():
        a = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        b = tiny_model(input_ids=changed, position_ids=batch["position_ids"], use_cache=False).logits[0]
    assert not torch.allclose(a[:7], b[:7])
    torch.testing.assert_close(a[7:], b[7:], atol=0, rtol=0)  # later documents see nothing of it
