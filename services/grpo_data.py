"""The GRPO job's data: each stage's training problems and the held-out problems, as prompt dicts.

A stage takes either difficulty levels of the synthetic generator (``pretraining.data.make_problems``)
or a JSONL file with one ``{"question": ..., "answer": ...}`` per line. Questions are formatted with
the checkpoint's chat template (``pretraining.chat.format_prompt``) and tokenized once here, so the
rollout workers receive ``prompt_token_ids`` and prompts longer than ``max_prompt_tokens`` are
skipped with a warning instead of failing inside vLLM.

A prompt dict is what ``rollout.prompts.PromptSource`` hands to the workers:
``{"prompt_id", "prompt_token_ids", "text", "gold", "stage"}``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QA:
    """A problem the verifier can check: a question and its gold answer."""

    question: str
    answer: str
    difficulty: int = 0


def read_jsonl_problems(path: str | Path) -> list[QA]:
    """Problems from a JSONL file. Every bad line is an error naming the file, the line and the problem:
    not JSON, not an object, ``question`` missing or not a non-empty string, ``answer`` missing, null or
    empty (a number is fine: it becomes a string), ``difficulty`` not an integer. A file with no problem
    at all is an error too (a stage cannot train on nothing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problem file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(row, dict) or "question" not in row or "answer" not in row:
            raise ValueError(f"{where}: each line needs 'question' and 'answer'")
        question, answer, difficulty = row["question"], row["answer"], row.get("difficulty", 0)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: 'question' must be a non-empty string, got {question!r}")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise ValueError(f"{where}: 'answer' must be a non-empty string or a number, got {answer!r}")
        if isinstance(difficulty, bool) or not isinstance(difficulty, int):
            raise ValueError(f"{where}: 'difficulty' must be an integer, got {difficulty!r}")
        out.append(QA(question, str(answer), difficulty))
    if not out:
        raise ValueError(f"{path}: no problems (the file is empty or has only blank lines)")
    return out


def synthetic_problems(split: str, difficulties: list[int], n: int, seed: int) -> list[QA]:
    from pretraining.data import make_problems

    return [QA(p.question, p.answer, p.difficulty) for p in make_problems(split, difficulties, n, seed)]


def stage_problems(stage: Any, seed: int) -> list[QA]:
    """Training problems of one stage (a ``StageConfig``)."""
    if stage.data_file:
        return read_jsonl_problems(stage.data_file)
    return synthetic_problems("train", list(stage.difficulties), stage.num_problems, seed)


def heldout_problems(cfg: Any) -> list[QA]:
    """Held-out problems of the job (``GRPOJobConfig``): the eval file or the synthetic held-out split."""
    ev = cfg.eval
    if ev.data_file:
        return read_jsonl_problems(ev.data_file)[: ev.num_problems]
    levels = ev.difficulties or sorted({d for s in cfg.stages for d in (s.difficulties or [])})
    if not levels:
        raise ValueError("eval needs eval.difficulties or eval.data_file when every stage reads a data_file")
    return synthetic_problems("heldout", levels, ev.num_problems, ev.seed)


def check_data_files(cfg: Any) -> None:
    """Read every JSONL file the job (``GRPOJobConfig``) names, stages and eval, so that a bad line in the
    last stage's file stops the job before any training rather than hours into it."""
    for s, stage in enumerate(cfg.stages):
        if stage.data_file:
            try:
                read_jsonl_problems(stage.data_file)
            except (OSError, ValueError) as e:
                raise ValueError(f"stages.{s}.data_file: {e}") from None
    if cfg.eval.enabled and cfg.eval.data_file:
        try:
            read_jsonl_problems(cfg.eval.data_file)
        except (OSError, ValueError) as e:
            raise ValueError(f"eval.data_file: {e}") from None


def load_tokenizer(checkpoint: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def to_prompts(problems: list[QA], tokenizer, stage: int, max_prompt_tokens: int,
               id_prefix: str) -> list[dict[str, Any]]:
    """Chat-format and tokenize problems into prompt dicts; too-long prompts are skipped (logged)."""
    from pretraining.chat import format_prompt

    out, skipped = [], 0
    for i, p in enumerate(problems):
        text = format_prompt(tokenizer, p.question)
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
