"""Answer extraction: find the final answer in a model completion.

Precedence: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces); else the last marked answer
line ("final answer is ...", "the answer is ...", GSM8K ``#### ...``, ``Answer: ...``), with inline math (``$...$``,
``\\(...\\)``, ``\\[...\\]``) inside it unwrapped; else, only when asked, the last number.
All scanning is linear in the completion length (no backtracking-prone regexes).
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Extraction(NamedTuple):
    answer: str | None
    source: str
    """``boxed`` | ``final_answer`` | ``gsm8k`` | ``answer_line`` | ``last_number`` | ``none``."""


_MARKERS = [
    ("final_answer", re.compile(r"final answer(?: is|:)?\s*(?::\s*)?|(?<![a-z])the answer is\s*:?\s*", re.IGNORECASE)),
    ("gsm8k", re.compile(r"####\s*")),
    ("answer_line", re.compile(r"(?<![a-z])answer\s*(?:is\s*)?:\s*", re.IGNORECASE)),
]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_MATH_SPANS = [("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")]
_TRAILERS = re.compile(r"(?:\.\s+.*|\.\s*$|\s+I hope it is correct.*)$", re.IGNORECASE | re.DOTALL)


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of each ``{`` -> index of its matching ``}`` (escaped ``\\{`` ``\\}`` ignored). One pass."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for i, c in enumerate(text):
        if c in "{}" and i > 0 and text[i - 1] == "\\":
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])\s*")
_TOKEN = re.compile(r"[^\s$]+")


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{}`` or ``\\fbox{}`` (also ``\\boxed 5``), or None. Linear time."""
    starts = [m.end() for m in _BOX.finditer(text)]
    if not starts:
        return None
    pairs = _brace_pairs(text)
    for after in reversed(starts):
        if after < len(text) and text[after] == "{":
            close = pairs.get(after)
            if close is not None:
                return text[after + 1:close].strip()
            continue
        if text[after - 1].isspace() and (m := _TOKEN.match(text, after, after + 200)):  # \boxed 5: one token
            return m.group(0)
    return None


def unwrap_math(text: str) -> str:
    """Strip surrounding whitespace and inline-math delimiters; take the first math span if any."""
    s = text.strip()
    for open_, close in _MATH_SPANS:
        i = s.find(open_)
        if i == -1:
            continue
        j = s.find(close, i + len(open_))
        if j == -1:
            continue
        return s[i + len(open_):j].strip()
    return s


def _marked_answer(text: str) -> tuple[str, str] | None:
    best = None
    for source, pattern in _MARKERS:
        m = None
        for m in pattern.finditer(text):
            pass
        if m is None:
            continue
        if best is None or m.end() > best[2]:
            best = (source, m.start(), m.end())
    if best is None:
        return None
    source, _, end = best
    line = text[end:].split("\n", 1)[0]
    # "$...$" may span the first line only partially; unwrap it before cutting sentences
    answer = unwrap_math(line)
    if answer == line.strip():
        answer = _TRAILERS.sub("", answer).strip()
    answer = answer.rstrip(".").strip()
    return (answer, source) if answer else None


def find_answer(completion: str, last_number_fallback: bool = False) -> Extraction:
    """The answer in ``completion`` and where it came from."""
    boxed = last_boxed(completion)
    if boxed is not None and boxed != "":
        return Extraction(boxed, "boxed")
    marked = _marked_answer(completion)
    if marked is not None:
        inner = last_boxed(marked[0])
        return Extraction(inner if inner else marked[0], marked[1])
    if last_number_fallback:
        last = None
        for last in _NUMBER.finditer(completion):
            pass
        if last is not None:
            return Extraction(last.group(0).rstrip(","), "last_number")
    return Extraction(None, "none")


def extract_answer(completion: str, last_number_fallback: bool = False) -> str | None:
    """The final answer found in ``completion`` (see the module docstring), or None."""
    return find_answer(completion, last_number_fallback).answer
