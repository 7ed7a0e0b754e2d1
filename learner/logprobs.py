"""Per-token log-probs and entropy of the completion tokens, without ever holding ``[tokens, vocab]`` logits.

``completion_logprobs(model, batch, ...)`` runs the decoder once (a packed row or right-padded rows, see
``learner.batching.collate``), takes the final hidden states only at the positions that predict a
completion token, and hands them to ``head_logprobs``: lm_head + temperature + log-softmax over a chunk
of positions at a time (``chunk_mib`` of float32 logits). The backward pass recomputes each chunk's
logits instead of keeping them, so the loss path's memory is one chunk's logits, not ``tokens x vocab``.

- Entropy comes from the same chunk's softmax (no second softmax) and only carries a gradient when
  asked (``entropy_grad``, i.e. ``entropy_coef != 0``); otherwise it is a detached metric.
- Tied and untied heads alike: the head is ``model.get_output_embeddings()``; under FSDP2 the root
  module's parameters are still gathered after its forward, and the head's gradient reaches FSDP's
  reduce-scatter like any other.
- Logits are taken in float32 (as ``log_softmax(logits.float())`` did); with bf16 compute the matmul
  runs in bf16 and the head's gradient is accumulated over chunks in float32.
"""

from __future__ import annotations

import warnings

import torch


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, inv_temp: float) -> torch.Tensor:
    z = h @ weight.t()
    if bias is not None:
        z = z + bias
    z = z.float()
    return z * inv_temp if inv_temp != 1.0 else z


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b, -1) as a batched dot product (no ``[rows, vocab]`` temporary)."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).reshape(a.shape[0])


class ChunkedHeadLogProbs(torch.autograd.Function):
    """``(hidden [N, H], weight [V, H], bias, targets [N]) -> (logp [N], entropy [N])``, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_temp: float, chunk: int, entropy_grad: bool):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            logq = _chunk_logits(hidden[s:s + chunk], weight, bias, inv_temp)
            logq -= torch.logsumexp(logq, dim=-1, keepdim=True)
            logp[s:s + chunk] = logq.gather(-1, targets[s:s + chunk, None]).squeeze(-1)
            ent[s:s + chunk] = -_rowdot(logq.exp(), logq)
            del logq
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.inv_temp, ctx.chunk, ctx.entropy_grad = inv_temp, chunk, entropy_grad
        ctx.set_materialize_grads(False)
        if not entropy_grad:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, targets = ctx.saved_tensors
        if not ctx.entropy_grad:
            g_ent = None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        if g_logp is None and g_ent is None:
            return grad_h, grad_w, grad_b, None, None, None, None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, t = hidden[s:s + ctx.chunk], targets[s:s + ctx.chunk, None]
            logq = _chunk_logits(h, weight, bias, ctx.inv_temp)
            logq -= torch.logsumexp(logq, dim=-1, keepdim=True)
            p = logq.exp()
            # dz = g_logp * (onehot(t) - p) + g_ent * dH/dz, with dH/dz_j = -p_j (log p_j + H)
            if g_ent is not None:
                coef = logq.add_(-_rowdot(p, logq)[:, None]).mul_(-g_ent[s:s + ctx.chunk, None].float())
                if g_logp is not None:
                    coef.sub_(g_logp[s:s + ctx.chunk, None].float())
                gz = p.mul_(coef)
            else:
                gz = p.mul_(-g_logp[s:s + ctx.chunk, None].float())
            del logq
            if g_logp is not None:
                gz.scatter_add_(-1, t, g_logp[s:s + ctx.chunk, None].float())
            if ctx.inv_temp != 1.0:
                gz.mul_(ctx.inv_temp)
            gzw = gz.to(weight.dtype)
            if need_h:
                grad_h[s:s + ctx.chunk] = (gzw @ weight).to(hidden.dtype)
            if need_w and weight.dtype == torch.float32:
                grad_w.addmm_(gzw.t(), h.float())
            elif need_w:  # bf16 matmul, float32 accumulation over chunks
                grad_w.add_((gzw.t() @ h.to(weight.dtype)).float())
            if need_b:
                grad_b += gz.sum(0)
            del gz, gzw
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None, None, None)


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, bias: torch.Tensor | None = None,
                  temperature: float = 1.0, chunk_tokens: int = 1024,
                  entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ weight.T / temperature)[target] and the entropy of that softmax, per row of
    ``hidden`` (``[N, H]``), computed ``chunk_tokens`` rows at a time. The entropy is detached unless
    ``entropy_grad``."""
    logp, ent = ChunkedHeadLogProbs.apply(hidden, weight, bias, targets, 1.0 / temperature, int(chunk_tokens),
                                          bool(entropy_grad))
    return logp, (ent if entropy_grad else ent.detach())


def output_head(model):
    """``(weight, bias)`` of the model's lm_head; refuses heads that are more than a linear map."""
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(model.config, attr, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"{type(model).__name__}: config.{attr} is set; the learner's chunked "
                                      f"log-probs handle a plain linear lm_head only")
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def chunk_tokens_for(vocab_size: int, chunk_mib: float) -> int:
    """Positions per chunk so that one chunk's float32 logits take about ``chunk_mib`` MiB."""
    return max(1, int(chunk_mib * 2**20) // (4 * vocab_size))


def completion_logprobs(model, batch: dict, *, temperature: float = 1.0, chunk_mib: float = 256,
                        entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of a micro-batch's completion tokens, laid out ``[sequences, completion
    tokens]`` like the batch's ``loss_mask`` (0 where a sequence is shorter).

    ``batch`` comes from ``learner.batching.collate`` (packed: ``position_ids``, no attention mask, so
    transformers keeps attention inside each sequence; padded: ``attention_mask``) and lives on the
    model's device.
    """
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    if "seq_lens" in batch:  # read by learner.packed_attention; other attention implementations ignore it
        inputs["packed_seq_lens"] = batch["seq_lens"]
    # logits_to_keep=1: the model's own head runs on one position; ours runs on the completion positions
    with warnings.catch_warnings():  # FSDP2 warns about in-place ops on view outputs; none is made here
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        out = model(**inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    hidden = out.hidden_states[-1]  # after the final norm
    del out
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["positions"])
    weight, bias = output_head(model)
    logp, ent = head_logprobs(h, weight, batch["targets"], bias=bias, temperature=temperature,
                              chunk_tokens=chunk_tokens_for(weight.shape[0], chunk_mib), entropy_grad=entropy_grad)
    layout = batch["completion_mask"]
    return (logp.new_zeros(layout.shape).masked_scatter(layout, logp),
            ent.new_zeros(layout.shape).masked_scatter(layout, ent))
