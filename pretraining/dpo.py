"""``flywheel dpo``: preference optimisation with ``sigmoid`` (DPO), ``ipo`` or ``apo_zero`` losses.

Pairs come from ``data_file`` (TRL's ``prompt`` / ``chosen`` / ``rejected``, standard or conversational,
encoded with the checkpoint's own chat template) or are built in (``pairs``): ``synthetic``, a correct
worked solution (chosen) vs a plausible wrong one (rejected: an arithmetic slip or a skipped final step)
for the same train-split question, or ``on_policy``: the starting model's own correct and wrong samples
of a train-split question (:func:`on_policy_pairs`). The reference model is the starting checkpoint; its log-probs are computed
once before training. ``rpo_alpha`` adds the chosen side's NLL (RPO). Logged: loss, implicit rewards of
chosen and rejected (``beta * log pi/pi_ref``), their margin, the preference accuracy and the chosen NLL.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

from pretraining.config import DPOConfig

log = logging.getLogger(__name__)


def preference_losses(pc, pr, rc, rr, beta: float, loss: str, len_c=None, len_r=None, rpo_alpha: float = 0.0):
    """Per-pair losses from policy (``pc``, ``pr``) and reference (``rc``, ``rr``) sequence log-probs.

    - ``sigmoid`` (DPO): ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``
    - ``ipo``: ``(h - 1/(2 beta))^2`` with ``h`` the same difference of log-ratios, each log-prob
      averaged over its completion tokens (``len_c``, ``len_r``), as IPO implementations do
    - ``apo_zero``: ``(1 - sigmoid(beta * (pc - rc))) + sigmoid(beta * (pr - rr))`` (push chosen up,
      rejected down, anchored at the reference)

    ``rpo_alpha > 0`` adds ``rpo_alpha * (-pc / len_c)``, the chosen response's per-token NLL (RPO, as
    in Iterative RPO / Llama 3 and TRL's ``rpo_alpha``): a preference loss alone can lower the chosen
    log-prob too as long as the rejected one falls faster, which costs accuracy on this data.
    """
    import torch.nn.functional as F

    if rpo_alpha < 0:
        raise ValueError(f"rpo_alpha={rpo_alpha}: must be >= 0")
    if (loss == "ipo" or rpo_alpha > 0) and (len_c is None or (loss == "ipo" and len_r is None)):
        raise ValueError(f"loss={loss!r} with rpo_alpha={rpo_alpha} needs the completion lengths len_c and len_r")
    nll = -pc / len_c if rpo_alpha > 0 else 0.0
    if loss == "ipo":
        pc, pr, rc, rr = pc / len_c, pr / len_r, rc / len_c, rr / len_r
    chosen, rejected = pc - rc, pr - rr
    if loss == "sigmoid":
        pref = -F.logsigmoid(beta * (chosen - rejected))
    elif loss == "ipo":
        pref = (chosen - rejected - 1 / (2 * beta)) ** 2
    elif loss == "apo_zero":
        pref = (1 - (beta * chosen).sigmoid()) + (beta * rejected).sigmoid()
    else:
        raise ValueError(f"loss={loss!r}: expected sigmoid, ipo or apo_zero")
    return pref + rpo_alpha * nll if rpo_alpha > 0 else pref


def sequence_logps(model, batch: dict):
    """``(sum of target log-probs, target count)`` per row; targets are labels != -100."""
    import torch

    from pretraining.packing import IGNORE

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["labels"]
    mask = labels != IGNORE
    logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)


def on_policy_pairs(checkpoint: str, n_prompts: int, k: int, seed: int, difficulties: list[int], *,
                    max_tokens: int = 160, temperature: float = 1.0, system_prompt: str | None = None,
                    prompt_template: str | None = None) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Pairs whose rejected side is a mistake ``checkpoint`` actually makes (Instella-Math, online DPO).

    ``k`` samples per train-split problem from vLLM, scored by ``rewards.verify``; a problem with a
    wrong finished sample gives one pair: a correct sample as chosen (the reference solution when no
    sample is correct), the wrong one as rejected. Truncated samples are dropped (appending an
    end-of-turn would make them a sequence the model never produced). Returns ``(pairs, stats)``.
    """
    import gc

    from vllm import SamplingParams

    from pretraining.chat import encode_prompt
    from pretraining.data import make_problems
    from pretraining.evaluate import _verify_all, make_llm
    from pretraining.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    problems = make_problems("train", difficulties, n_prompts, seed)
    tok = load_tokenizer(checkpoint)
    llm = make_llm(checkpoint, seed=seed)
    try:
        outs = llm.generate([{"prompt_token_ids": encode_prompt(tok, p.question, system_prompt, prompt_template)}
                             for p in problems],
                            SamplingParams(n=k, temperature=temperature, max_tokens=max_tokens), use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    texts = [[c.text for c in o.outputs if c.finish_reason == "stop"] for o in outs]
    flat = _verify_all([t for ts in texts for t in ts], [p.answer for p, ts in zip(problems, texts) for _ in ts])
    scored = []
    for ts in texts:
        scored.append(list(zip(ts, flat[:len(ts)])))
        flat = flat[len(ts):]
    pairs = pairs_from_samples(problems, scored)
    n_samples = sum(len(s) for s in scored)
    stats = {"prompts": len(problems), "finished_samples": n_samples,
             "sample_acc": sum(v for s in scored for _, v in s) / max(n_samples, 1), "pairs": len(pairs),
             "gold_chosen": sum(not any(v for _, v in s) for s in scored if s and not all(v for _, v in s)),
             "seconds": round(time.perf_counter() - t0, 1)}
    log.info("on-policy pairs: %s", stats)
    return pairs, stats


def pairs_from_samples(problems: list, samples: list[list[tuple[str, bool]]]) -> list[dict[str, str]]:
    """One pair per problem with a wrong sample: the first correct sample (else the reference solution)
    as chosen, the first wrong one as rejected. ``samples[i]`` holds ``(text, correct)`` of problem i."""
    if len(problems) != len(samples):
        raise ValueError(f"{len(problems)} problems but {len(samples)} sample lists")
    pairs = []
    for p, ss in zip(problems, samples):
        right = [t for t, ok in ss if ok]
        wrong = [t for t, ok in ss if not ok]
        if wrong:
            pairs.append({"prompt": p.question, "chosen": right[0] if right else p.solution, "rejected": wrong[0],
                          "answer": p.answer})
    return pairs


def pair_rows(cfg: DPOConfig, tokenizer, pairs: list[dict] | None = None) -> tuple[list, list]:
    """Padded chosen and rejected rows (completion-only targets, masks from the checkpoint's own template),
    one of each per pair. ``pairs`` defaults to ``cfg.data_file``'s (TRL format) or the synthetic
    :func:`pretraining.data.preference_pairs`; a pair the template cannot encode or longer than
    ``seq_len`` is an error naming its source and row."""
    from pretraining.chat import ChatTemplateError, encode_prompt_completion
    from pretraining.data import preference_pairs
    from pretraining.dataset_files import DataFileError, read_preference_pairs
    from pretraining.packing import pad_rows
    from pretraining.tokenizer import pad_token_id

    source = cfg.data_file or "synthetic pairs"
    if pairs is None:
        pairs = (read_preference_pairs(cfg.data_file) if cfg.data_file
                 else preference_pairs(cfg.n_pairs, cfg.seed, cfg.difficulties))
    if not pairs:
        raise ValueError(f"DPO dataset is empty (n_pairs={cfg.n_pairs}, pairs={cfg.pairs!r}: with on_policy, "
                         "no sampled completion was wrong)")
    seqs = {"chosen": [], "rejected": []}
    for i, p in enumerate(pairs):
        for side in seqs:
            try:
                prompt, completion = encode_prompt_completion(tokenizer, p["prompt"], p[side],
                                                              system_prompt=cfg.system_prompt,
                                                              prompt_template=cfg.prompt_template)
            except ChatTemplateError:
                raise
            except ValueError as e:
                raise DataFileError(f"{source}: row {i} ({side}): {e}") from None
            if len(prompt) + len(completion) > cfg.seq_len:
                raise DataFileError(f"{source}: row {i}: the {side} sequence has {len(prompt) + len(completion)} "
                                    f"tokens, longer than seq_len={cfg.seq_len}")
            seqs[side].append((prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    longest = max(len(s[0]) for side in seqs.values() for s in side)
    pad = pad_token_id(tokenizer)
    return pad_rows(seqs["chosen"], longest, pad), pad_rows(seqs["rejected"], longest, pad)


def _collate_pairs(chosen: list, rejected: list, idx: list[int], ref) -> dict:
    from pretraining.packing import collate

    b = collate([chosen[i] for i in idx] + [rejected[i] for i in idx], packed=False)
    b["ref_chosen"], b["ref_rejected"] = ref[0][idx], ref[1][idx]
    return b


def reference_logps(model, chosen: list, rejected: list, batch: int = 64, device: str = "cpu"):
    """Reference log-probs of every chosen and rejected row (computed once, no grad, on CPU tensors). Run
    it on the model as it will train (device, sharding, bf16 compute), so that at step 0 the policy equals
    the reference exactly. Under FSDP every rank computes every row (forwards are collective)."""
    import torch

    from pretraining.packing import collate

    model.eval()
    outs = []
    with torch.no_grad():
        for rows in (chosen, rejected):
            vals = []
            for i in range(0, len(rows), batch):
                mb = {k: v.to(device) for k, v in collate(rows[i:i + batch], packed=False).items()}
                vals.append(sequence_logps(model, mb)[0].cpu())  # float32 already (log_softmax of upcast logits)
            outs.append(torch.cat(vals))
    return outs


def dpo_objective(beta: float, loss: str, rpo_alpha: float = 0.0):
    def objective(model, b: dict):
        logps, counts = sequence_logps(model, b)
        n = b["ref_chosen"].shape[0]
        pc, pr, lc, lr = logps[:n], logps[n:], counts[:n], counts[n:]
        losses = preference_losses(pc, pr, b["ref_chosen"], b["ref_rejected"], beta, loss, lc, lr, rpo_alpha)
        rc, rj = beta * (pc - b["ref_chosen"]).detach(), beta * (pr - b["ref_rejected"]).detach()
        stats = {"reward_chosen": rc.sum().item(), "reward_rejected": rj.sum().item(),
                 "reward_margin": (rc - rj).sum().item(), "preference_acc": (rc > rj).float().sum().item(),
                 "nll_chosen": (-pc.detach() / lc).sum().item()}
        return losses.sum(), stats

    return objective


def run_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Optimise ``cfg.init_from`` on preference pairs; returns ``{"final", "history", "seconds"}``."""
    import torch

    from pretraining.checkpoint import load_checkpoint
    from pretraining.distributed import close_distributed, init_distributed, shard_model
    from pretraining.metrics import plot_loss_curves
    from pretraining.trainer import Trainer, export_model

    t0 = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pairs, pair_stats = None, {}
    if cfg.data_file:
        log.info("DPO pairs from %s (pairs=%r and difficulties apply to the built-in data only)", cfg.data_file,
                 cfg.pairs)
    elif cfg.pairs == "on_policy":  # sample before the model is loaded: the engine needs the memory
        pairs, pair_stats = on_policy_pairs(cfg.init_from, cfg.n_pairs, cfg.samples_per_prompt, cfg.seed + 101,
                                            cfg.difficulties, max_tokens=cfg.sample_max_tokens,
                                            system_prompt=cfg.system_prompt, prompt_template=cfg.prompt_template)
    model, tok = load_checkpoint(cfg.init_from)
    chosen, rejected = pair_rows(cfg, tok, pairs)
    dist = init_distributed(cfg.distributed)
    rank0 = dist is None or dist.rank == 0
    if dist is not None:
        shard_model(model, dist)
    world = dist.world_size if dist else 1
    device = dist.device if dist else "cpu"
    ref = reference_logps(model, chosen, rejected, device=device)
    per_step = cfg.batch_size * cfg.grad_accum * world
    per_epoch = max(len(chosen) // per_step, 1)
    total = per_epoch * cfg.epochs
    orders: dict[int, list[int]] = {}

    def batches_at(step: int) -> list[dict]:
        epoch, j = divmod(step, per_epoch)
        if epoch not in orders:
            orders[epoch] = list(range(len(chosen)))
            random.Random(cfg.seed * 7919 + epoch).shuffle(orders[epoch])
        idx = orders[epoch][j * per_step:(j + 1) * per_step]
        mine = dist.shard(idx) if dist else idx
        return [{k: v.to(device) for k, v in _collate_pairs(chosen, rejected, mine[a:a + cfg.batch_size], ref).items()}
                for a in range(0, len(mine), cfg.batch_size)]

    run_dir = Path(cfg.out_dir)
    if rank0:
        log.info("DPO (%s, beta %g): %d pairs, %d steps", cfg.loss, cfg.beta, len(chosen), total)
    trainer = Trainer.for_run(cfg, model, total, objective=dpo_objective(cfg.beta, cfg.loss, cfg.rpo_alpha),
                              count=lambda b: int(b["ref_chosen"].shape[0]), dist=dist, name="dpo")
    trainer.run(total, batches_at, stage="dpo", on_step=trainer.saving_every(cfg.save_every, total, tok))
    final = export_model(model, tok, run_dir / "final", dist,
                         meta={"step": total, "job": "dpo", "loss": cfg.loss, "beta": cfg.beta, "rpo_alpha": cfg.rpo_alpha,
                               "pairs": cfg.data_file or cfg.pairs, "pair_stats": pair_stats, "init_from": cfg.init_from})
    if trainer.metrics is not None:
        trainer.metrics.close()
        plot_loss_curves(trainer.metrics.path, run_dir / "loss.png", keys=("loss", "reward_margin", "preference_acc"),
                         title=f"DPO ({cfg.loss})")
    close_distributed(dist)
    return {"final": str(final), "history": trainer.history, "seconds": time.perf_counter() - t0,
            "pairs": pair_stats}


def main(cfg: DPOConfig) -> int:
    out = run_dpo(cfg)
    last = out["history"][-1]
    print(f"DPO done in {out['seconds']:.0f}s: {out['final']} (loss {last['loss']:.4f}, margin "
          f"{last['reward_margin']:.3f}, preference acc {last['preference_acc']:.2f})", flush=True)
    if cfg.eval_n:
        from pretraining.evaluate import report_greedy

        report_greedy(out['final'], cfg.eval_n, "DPO")
    return 0
