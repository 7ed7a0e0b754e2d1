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
    """Problems from a JSONL file; a line without ``question`` or ``answer`` is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problem file not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None
        if not isinstance(row, dict) or "question" not in row or "answer" not in row:
            raise ValueError(f"{path}:{lineno}: each line needs 'question' and 'answer'")
        out.append(QA(str(row["question"]), str(row["answer"]), int(row.get("difficulty", 0))))
    if not out:
        raise ValueError(f"{path}: no problems")
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
