"""Chunked log-probs and entropy equal the full-logits computation; packed and padded micro-batches give the
same loss and gradients (tiny random Qwen2 models built with transformers' own config class)."""

from __future__ import annotations

import random

import pytest
import torch

from learner.batching import TrainSequence, collate
from learner.config import LossConfig
from learner.logprobs import completion_logprobs, head_logprobs
from learner.losses import Normalizer, grpo_loss, token_entropy, token_logprobs


@pytest.mark.parametrize("n,hidden,vocab,chunk", [(7, 16, 50, 3), (33, 32, 1000, 8), (5, 8, 13, 100), (64, 16, 300, 64)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_head_matches_full_logits_values_and_gradients(n, hidden, vocab, chunk, temperature, with_bias):
    g = torch.Generator().manual_seed(n * vocab)
    h = torch.randn(n, hidden, generator=g, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, requires_grad=True)
    b = torch.randn(vocab, generator=g, requires_grad=True) if with_bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)

    def grads(lp, ent):
        (lp * g_lp + ent * g_ent).sum().backward()
        out = [t.grad.clone() for t in (h, w, b) if t is not None]
        for t in (h, w, b):
            if t is not None:
                t.grad = None
        return out

    lp, ent = head_logprobs(h, w, targets, bias=b, temperature=temperature, chunk_tokens=chunk, entropy_grad=True)
    ours = grads(lp, ent)
    logits = (h @ w.t() + (b if b is not None else 0.0)) / temperature
    ref_lp, ref_ent = token_logprobs(logits, targets), token_entropy(logits)
    theirs = grads(ref_lp, ref_ent)
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
    for a, r in zip(ours, theirs):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_entropy_has_no_gradient_unless_asked():
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    lp, ent = head_logprobs(h, w, torch.tensor([1, 2, 3, 4]), chunk_tokens=2)
    assert lp.requires_grad and not ent.requires_grad


def tiny_qwen2(tied: bool, vocab: int = 97):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                      intermediate_size=64, vocab_size=vocab, tie_word_embeddings=tied, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).float().train()


def sequences(n: int, vocab: int, seed: int, long: int = 0) -> list[TrainSequence]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, c = rng.randint(1, 6), (long if (long and i == 0) else rng.randint(1, 9))
        out.append(TrainSequence([rng.randrange(vocab) for _ in range(p)], [rng.randrange(vocab) for _ in range(c)],
                                 [-rng.uniform(1, 5) for _ in range(c)], [0] * c, rng.uniform(-1, 1),
                                 [rng.choice([1.0, 1.0, 0.5]) for _ in range(c)]))
    return out


def full_logits_reference(model, seqs, temperature):
    """Today's unchunked path: logits of right-padded rows, log_softmax and entropy everywhere."""
    b = collate(seqs, packed=False)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits / temperature
    flat = logits.reshape(-1, logits.shape[-1])[b["positions"]]
    lp, ent = token_logprobs(flat, b["targets"]), token_entropy(flat)
    m = b["completion_mask"]
    return lp.new_zeros(m.shape).masked_scatter(m, lp), ent.new_zeros(m.shape).masked_scatter(m, ent)


def loss_and_grads(model, logp, ent, batch, cfg):
    norm = Normalizer(tokens=float((batch["loss_mask"] > 0).sum()), sequences=float(len(batch["advantages"])))
    parts = grpo_loss(cfg, logp, logp.detach() - 0.05, batch["behaviour_logprobs"], batch["advantages"],
                      batch["loss_mask"], norm, entropy=ent)
    model.zero_grad(set_to_none=True)
    parts.loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return float(parts.loss.detach()), grads


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature,entropy_coef", [(1.0, 0.0), (0.6, 0.01)])
def test_chunked_packed_and_padded_match_the_full_logits_path(tied, temperature, entropy_coef):
    model = tiny_qwen2(tied)
    seqs = sequences(5, 97, seed=3, long=40)
    cfg = LossConfig(temperature=temperature, entropy_coef=entropy_coef, aggregation="sequence")
    results = {}
    for name in ("full", "packed", "padded"):
        if name == "full":
            lp, ent = full_logits_reference(model, seqs, temperature)
            if entropy_coef == 0:
                ent = ent.detach()
            batch = collate(seqs, packed=False)
        else:
            batch = collate(seqs, packed=name == "packed")
            lp, ent = completion_logprobs(model, batch, temperature=temperature, chunk_mib=0.001,  # 2-token chunks
                                          entropy_grad=entropy_coef != 0)
        results[name] = (lp.detach(), ent.detach(), *loss_and_grads(model, lp, ent, batch, cfg))
    ref = results["full"]
    for name in ("packed", "padded"):
        lp, ent, loss, grads = results[name]
        torch.testing.assert_close(lp, ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent, ref[1], rtol=1e-5, atol=1e-5)
        assert loss == pytest.approx(ref[2], rel=1e-5, abs=1e-7), name
        assert set(grads) == set(ref[3])
        for k in grads:
            torch.testing.assert_close(grads[k], ref[3][k], rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")


def test_packed_sequences_do_not_attend_to_each_other():
    """A sequence's log-probs are the same alone and packed after another one."""
    model = tiny_qwen2(tied=True)
    a, b = sequences(2, 97, seed=5)
    alone, _ = completion_logprobs(model, collate([b]))
    packed, _ = completion_logprobs(model, collate([a, b]))
    torch.testing.assert_close(packed[1, :len(b.completion_ids)], alone[0], rtol=1e-5, atol=1e-5)


def test_packed_sdpa_runs_each_sequence_alone_and_matches_the_masked_row(monkeypatch, tmp_path):
    """The learner's attention (``learner.packed_attention``) equals transformers' block-diagonal mask."""
    from transformers import AttentionInterface, Qwen2ForCausalLM

    import learner.packed_attention as pa

    tiny_qwen2(tied=True).save_pretrained(str(tmp_path))
    masked = Qwen2ForCausalLM.from_pretrained(str(tmp_path), attn_implementation="sdpa")
    ours = Qwen2ForCausalLM.from_pretrained(str(tmp_path), attn_implementation=pa.register())
    calls = []
    real = pa.packed_sdpa_attention

    def spy(*args, packed_seq_lens=None, **kwargs):
        calls.append(packed_seq_lens)
        return real(*args, packed_seq_lens=packed_seq_lens, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, pa.PACKED_SDPA, spy)
    seqs = sequences(4, 97, seed=7, long=30)
    for packed in (True, False):
        batch = collate(seqs, packed=packed)
        want, _ = completion_logprobs(masked, batch)
        got, _ = completion_logprobs(ours, batch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert calls and calls[0] == [len(s) for s in seqs] and calls[-1] is None  # per layer: packed, then padded


def test_bf16_chunked_head_is_as_accurate_as_bf16_full_logits():
    """With bf16 compute (the GPU learner) the chunked head is no further from a float64 reference."""
    g = torch.Generator().manual_seed(1)
    h0, w0 = torch.randn(40, 64, generator=g), torch.randn(3000, 64, generator=g) * 0.1
    targets = torch.randint(0, 3000, (40,), generator=g)
    g_lp, g_ent = torch.randn(40, generator=g), torch.randn(40, generator=g)

    def run(fn, dtype):
        h, w = h0.to(dtype).requires_grad_(), w0.to(dtype).requires_grad_()
        lp, ent = fn(h, w)
        (lp * g_lp + ent * g_ent).sum().backward()
        assert w.grad.dtype == dtype
        return [t.detach().double() for t in (lp, ent, h.grad, w.grad)]

    def full(h, w):
        z = (h @ w.t()) / 0.8
        return token_logprobs(z, targets), token_entropy(z)

    def chunked(h, w):
        return head_logprobs(h, w, targets, temperature=0.8, chunk_tokens=7, entropy_grad=True)

    ref = run(full, torch.float64)
    for ours, theirs, r in zip(run(chunked, torch.bfloat16), run(full, torch.bfloat16), ref):
        assert float((ours - r).abs().max()) <= 1.1 * float((theirs - r).abs().max()) + 1e-6
