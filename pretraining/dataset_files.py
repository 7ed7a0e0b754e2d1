"""Dataset files users bring: JSONL, Parquet or a local ``datasets`` folder, read into checked records.

One reader (:func:`read_rows`) for every job's ``data_file``:

- ``*.jsonl`` (one JSON object per line; ``*.json`` holding a JSON array also works);
- ``*.parquet`` (pyarrow);
- a folder written by ``datasets.Dataset.save_to_disk`` (one split: give ``<folder>/<split>`` for a
  ``DatasetDict``).

and one checker per record kind, each refusing a bad row with the file, the row (``file:LINE`` for
JSONL, ``file: row N`` counted from 0 otherwise), the field and the rule:

- :func:`read_problems`: question + gold answer (``question_field`` / ``answer_field``); the gold may
  be a bare answer, a worked solution ending in ``\\boxed{}`` or a GSM8K ``#### N`` answer, and is
  passed to the verifier as written (``rewards`` extracts a gold's final answer);
- :func:`read_conversations`: TRL's conversational SFT format, ``{"messages": [{role, content}, ...]}``;
- :func:`read_preference_pairs`: TRL's preference format, ``prompt`` / ``chosen`` / ``rejected`` as
  strings (standard) or message lists (conversational, with the prompt explicit or implicit as the
  shared start of ``chosen`` and ``rejected``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ROLES = ("system", "user", "assistant")


class DataFileError(ValueError):
    """A dataset file or row that a job cannot use; the message names the file, the row or field, the rule."""


@dataclass(frozen=True)
class QA:
    """A problem the verifier can check: a question and its gold answer."""

    question: str
    answer: str
    difficulty: int = 0


def read_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for every row of a dataset file or folder; ``where`` names the file and the row.
    A missing file, an unknown type or unreadable content is an error naming the file."""
    path = Path(path)
    if path.is_dir():
        yield from _dataset_folder(path)
        return
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet(path)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        yield from _json_lines(path)
    else:
        raise DataFileError(f"{path}: unsupported data file type {suffix!r}; expected .jsonl, .json, .parquet or a "
                         "`datasets` save_to_disk folder")


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not UTF-8 text ({e})") from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}: not valid JSON: {e}") from None
        for i, row in enumerate(rows):
            yield f"{path}: row {i}", row
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}:{lineno}: not valid JSON: {e}") from None
        yield f"{path}:{lineno}", row


def _parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path))
    except Exception as e:  # noqa: BLE001 - truncated / not parquet: name the file
        raise DataFileError(f"{path}: not a readable Parquet file ({e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}: row {i}", row


def _dataset_folder(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - not a save_to_disk folder: name it
        raise DataFileError(f"{path}: not a `datasets` save_to_disk folder ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataFileError(f"{path}: holds the splits {sorted(ds)}; give one split's folder, e.g. "
                             f"{path / sorted(ds)[0]}")
        ds = next(iter(ds.values()))
    for i, row in enumerate(ds):
        yield f"{path}: row {i}", row


def read_problems(path: str | Path, question_field: str = "question", answer_field: str = "answer") -> list[QA]:
    """Problems with gold answers. Every bad row is an error naming the file, the row and the rule: not an
    object, a field missing, the question not a non-empty string, the answer missing, null or empty (a
    number is fine: it becomes a string), ``difficulty`` not an integer. No row at all is an error too."""
    out = []
    for where, row in read_rows(path):
        if not isinstance(row, dict) or question_field not in row or answer_field not in row:
            has = sorted(row)[:12] if isinstance(row, dict) else type(row).__name__
            raise DataFileError(f"{where}: each row needs '{question_field}' and '{answer_field}' (question_field / "
                             f"answer_field); this row has {has}")
        question, answer, difficulty = row[question_field], row[answer_field], row.get("difficulty", 0)
        if not isinstance(question, str) or not question.strip():
            raise DataFileError(f"{where}: '{question_field}' must be a non-empty string, got {question!r}")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise DataFileError(f"{where}: '{answer_field}' must be a non-empty string or a number, got {answer!r}")
        if difficulty is None:
            difficulty = 0
        if isinstance(difficulty, bool) or not isinstance(difficulty, int):
            raise DataFileError(f"{where}: 'difficulty' must be an integer, got {difficulty!r}")
        out.append(QA(question, str(answer), difficulty))
    if not out:
        raise DataFileError(f"{path}: no problems (the file is empty or has only blank lines)")
    return out


def _messages(where: str, value: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataFileError(f"{where}: '{field}' must be a non-empty list of {{role, content}} messages, got "
                         f"{type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataFileError(f"{where}: '{field}'[{j}] must be {{role: one of {list(ROLES)}, content: string}}, "
                             f"got {m!r}"[:400])
        out.append({"role": m["role"], "content": m["content"]})
    return out


def read_conversations(path: str | Path, messages_field: str = "messages") -> list[list[dict[str, str]]]:
    """SFT conversations (TRL conversational format). A row without the field, a malformed message or a
    conversation without an assistant turn is an error naming the file, the row and the rule."""
    out = []
    for where, row in read_rows(path):
        if not isinstance(row, dict) or messages_field not in row:
            raise DataFileError(f"{where}: each row needs '{messages_field}' (a list of {{role, content}} messages)")
        msgs = _messages(where, row[messages_field], messages_field)
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataFileError(f"{where}: '{messages_field}' has no assistant message to train on")
        out.append(msgs)
    if not out:
        raise DataFileError(f"{path}: no conversations (the file is empty)")
    return out


def read_preference_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Preference pairs ``{prompt, chosen, rejected}`` (TRL format): ``prompt`` a string or the messages
    before the answer; ``chosen`` / ``rejected`` the answers as strings (or one assistant message each).
    Rows without ``prompt`` whose ``chosen`` and ``rejected`` are whole conversations give the prompt as
    their shared start (TRL's implicit prompt)."""
    out = []
    for where, row in read_rows(path):
        if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
            raise DataFileError(f"{where}: each row needs 'chosen' and 'rejected' (and 'prompt', unless they are "
                             "whole conversations)")
        chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
        if prompt is None:
            chosen = _messages(where, chosen, "chosen")
            rejected = _messages(where, rejected, "rejected")
            k = 0
            while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
                k += 1
            if chosen[k:-1] or rejected[k:-1] or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
                raise DataFileError(f"{where}: without 'prompt', 'chosen' and 'rejected' must be one conversation that "
                                 "differs only in its last (assistant) message")
            prompt = chosen[:k]
            chosen, rejected = chosen[-1]["content"], rejected[-1]["content"]
        else:
            if isinstance(prompt, list):
                prompt = _messages(where, prompt, "prompt")
            elif not isinstance(prompt, str) or not prompt.strip():
                raise DataFileError(f"{where}: 'prompt' must be a non-empty string or a list of messages, got {prompt!r}")
            chosen = _answer(where, chosen, "chosen")
            rejected = _answer(where, rejected, "rejected")
        if not prompt:
            raise DataFileError(f"{where}: the pair has no prompt before its answers")
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if not out:
        raise DataFileError(f"{path}: no preference pairs (the file is empty)")
    return out


def _answer(where: str, value: Any, field: str) -> str:
    if isinstance(value, list):
        msgs = _messages(where, value, field)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataFileError(f"{where}: '{field}' as messages must be exactly one assistant message")
        return msgs[0]["content"]
    if not isinstance(value, str) or not value.strip():
        raise DataFileError(f"{where}: '{field}' must be a non-empty string or one assistant message, got {value!r}")
    return value
