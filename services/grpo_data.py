"""The GRPO job's data: each stage's training problems and the held-out problems, as prompt dicts.

A stage takes either difficulty levels of the synthetic generator (``pretraining.data.make_problems``)
or a ``data_file`` (JSONL, Parquet or a ``datasets`` folder, read by ``pretraining.dataset_files``)
with ``question_field`` / ``answer_field``. Questions are formatted with the checkpoint's own chat
template, the job's ``system_prompt`` and ``prompt_template`` (``pretraining.chat.encode_prompt``) and
tokenized once here, so the rollout workers receive ``prompt_token_ids`` and prompts longer than
``max_prompt_tokens`` are skipped with a warning instead of failing inside vLLM. Golds are passed as
written (a bare answer, a worked solution ending in ``\\boxed{}``, a GSM8K ``#### N``): the verifier
reads their final answer.

A prompt dict is what ``rollout.prompts.PromptSource`` hands to the workers:
``{"prompt_id", "prompt_token_ids", "text", "gold", "stage"}``.
"""

from __future__ import annotations

import logging
from typing import Any

from pretraining.dataset_files import QA, DataFileError, read_problems

log = logging.getLogger(__name__)

__all__ = ["QA", "PromptCursor", "check_data_files", "check_job_inputs", "heldout_problems", "load_tokenizer", "read_problems",
           "stage_problems", "to_prompts"]


def synthetic_problems(split: str, difficulties: list[int], n: int, seed: int) -> list[QA]:
    from pretraining.data import make_problems

    return [QA(p.question, p.answer, p.difficulty) for p in make_problems(split, difficulties, n, seed)]


def stage_problems(stage: Any, seed: int) -> list[QA]:
    """Training problems of one stage (a ``StageConfig``)."""
    if stage.data_file:
        return read_problems(stage.data_file, stage.question_field, stage.answer_field)
    return synthetic_problems("train", list(stage.difficulties), stage.num_problems, seed)


def heldout_problems(cfg: Any) -> list[QA]:
    """Held-out problems of the job (``GRPOJobConfig``): the eval file or the synthetic held-out split."""
    ev = cfg.eval
    if ev.data_file:
        return read_problems(ev.data_file, ev.question_field, ev.answer_field)[: ev.num_problems]
    levels = ev.difficulties or sorted({d for s in cfg.stages for d in (s.difficulties or [])})
    if not levels:
        raise ValueError("eval needs eval.difficulties or eval.data_file when every stage reads a data_file")
    return synthetic_problems("heldout", levels, ev.num_problems, ev.seed)


def check_data_files(cfg: Any) -> dict[str, QA]:
    """Read every data file the job (``GRPOJobConfig``) names, stages and eval, so that a bad row in the last
    stage's file stops the job before any training rather than hours into it; returns each file's first
    problem by config path (``stages.1``, ``eval``)."""
    files = [(f"stages.{s}", st.data_file, st.question_field, st.answer_field) for s, st in enumerate(cfg.stages)]
    if cfg.eval.enabled:
        files.append(("eval", cfg.eval.data_file, cfg.eval.question_field, cfg.eval.answer_field))
    first = {}
    for name, path, qf, af in files:
        if path:
            try:
                first[name] = read_problems(path, qf, af)[0]
            except (OSError, ValueError) as e:
                raise DataFileError(f"{name}.data_file: {e}") from None
    return first


def check_job_inputs(cfg: Any) -> None:
    """Check everything the job reads before it starts anything: the checkpoint's weights against its
    config (``pretraining.checkpoint.check_weights``), its tokenizer and chat template
    (``pretraining.tokenizer.load_tokenizer``), every data file (:func:`check_data_files`), and the
    prompt of each file's first problem formatted with ``system_prompt`` / ``prompt_template``."""
    from pretraining.checkpoint import check_weights

    check_weights(cfg.model)
    tok = load_tokenizer(cfg.model)
    for name, qa in check_data_files(cfg).items():
        to_prompts([qa], tok, 0, 1 << 30, name, cfg.system_prompt, cfg.prompt_template)


def load_tokenizer(checkpoint: str):
    """The checkpoint's tokenizer, its chat template checked (``pretraining.tokenizer.load_tokenizer``)."""
    from pretraining.tokenizer import load_tokenizer as load

    return load(checkpoint)


def to_prompts(problems: list[QA], tokenizer, stage: int, max_prompt_tokens: int, id_prefix: str,
               system_prompt: str | None = None, prompt_template: str | None = None) -> list[dict[str, Any]]:
    """Chat-format and tokenize problems into prompt dicts; too-long prompts are skipped (logged)."""
    from pretraining.chat import format_prompt

    out, skipped = [], 0
    for i, p in enumerate(problems):
        text = format_prompt(tokenizer, p.question, system_prompt, prompt_template)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_tokens:
            skipped += 1
            continue
        out.append({"prompt_id": f"{id_prefix}-{i}", "prompt_token_ids": ids, "text": text, "gold": p.answer,
                    "stage": stage})
    if skipped:
        log.warning("%s: skipped %d of %d prompts longer than max_prompt_tokens=%d", id_prefix, skipped,
                    len(problems), max_prompt_tokens)
    if not out:
        raise ValueError(f"{id_prefix}: every prompt is longer than max_prompt_tokens={max_prompt_tokens}")
    return out


class PromptCursor:
    """Hands out a stage's prompts in order, cycling with fresh ids (``<id>#<epoch>``) when exhausted."""

    def __init__(self, prompts: list[dict[str, Any]], position: int = 0):
        self.prompts = prompts
        self.position = position
        """Prompts handed out so far (the data position saved in checkpoints)."""

    def take(self, k: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, len(self.prompts))
            p = dict(self.prompts[i])
            if epoch:
                p["prompt_id"] = f"{p['prompt_id']}#{epoch}"
            out.append(p)
            self.position += 1
        return out
