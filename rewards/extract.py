"""Answer extraction: find the final answer in a model completion, and the answer in a gold.

Three modes (``VerifyConfig.extraction``):

* ``marked`` (default): the final ``\\boxed{...}`` / ``\\fbox{...}``; else the last marked answer line
  ("final answer is ...", "the answer is ...", GSM8K ``#### ...``, ``Answer: ...``), inline math
  inside it unwrapped; else, only with ``last_number_fallback``, the last number.
* ``lenient`` (searches the whole completion, as math-verify does): the final boxed answer; else
  the last answer cue; else the last LaTeX math (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``,
  across lines); else the last number.
* ``answer``: the completion is the answer (already extracted upstream).

The final boxed answer is every box in the paragraph of the last box: boxes with different values
there ("\\boxed{3} or \\boxed{4}") come back joined as a list, which a single gold never equals.

Linear time by construction: boxes and math spans are found with ``str.find``/``rfind`` and one
brace-matching pass; the regexes run on capped windows only (a marker's line is read up to
``MAX_LINE_CHARS``, the lenient number search looks at the last ``MAX_TAIL_CHARS``) and have no
nested or adjacent unbounded quantifiers.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_LINE_CHARS = 2_000
"""An answer line is read up to this many characters after its marker."""
MAX_TAIL_CHARS = 2_000
"""The lenient last-number search reads only this many characters at the end of a completion."""


class Extraction(NamedTuple):
    answer: str | None
    source: str
    """``boxed`` | ``final_answer`` | ``gsm8k`` | ``answer_line`` | ``math`` | ``last_number`` | ``answer`` | ``none``."""


# Each marker: a literal found with a regex whose only quantifiers are bounded ({0,3}) or end the pattern.
_MARKERS = [
    ("final_answer", re.compile(r"final answer(?: is)?", re.IGNORECASE)),
    ("final_answer", re.compile(r"(?<![a-z])the answer is", re.IGNORECASE)),
    ("gsm8k", re.compile(r"####")),
    ("answer_line", re.compile(r"(?<![a-z])answer(?: is)?[ \t]{0,3}:", re.IGNORECASE)),
]
_LENIENT_MARKERS = _MARKERS + [
    ("final_answer", re.compile(r"(?:correct|right|best) (?:option|answer|choice) is", re.IGNORECASE)),
]
_NUMBER = re.compile(r"[-−]?(?:[1-9]\d{0,2}(?:,\d{3})+(?!\d)|[1-9]\d{0,2}(?: \d{3})+(?![\d,])|(?:0|[1-9]\d{3,}),\d+|\d+)"
                     r"(?:\.\d+)?(?:/\d+)?(?:\\?%)?|[-−]?\.\d+")
_MATH_OPEN = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_FILLER = ("is", "should be", "would be", "will be", "must be", "equals", "of", "=", ":", "be", "was")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_MAX_BOXES = 8  # more distinct boxes than this in the final paragraph: the answer is wrong anyway


_BRACE = re.compile(r"\\?[{}]")


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of each ``{`` -> index of its matching ``}`` (escaped ``\\{`` ``\\}`` ignored). One pass."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        if len(m.group()) == 2:
            continue
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _boxes(text: str) -> list[tuple[int, str]]:
    """``(start, content)`` of every complete ``\\boxed{}`` / ``\\fbox{}`` (also ``\\boxed 5``), in order."""
    starts = [m.end() for m in _BOX.finditer(text)]
    if not starts:
        return []
    pairs = _brace_pairs(text)
    out = []
    for after in starts:
        j = after
        while j < len(text) and j - after < 20 and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = pairs.get(j)
            if close is not None:
                out.append((after, text[j + 1:close].strip()))
        elif j > after and j < len(text):  # \boxed 5: one token
            end = j
            while end < len(text) and end - j < 200 and not text[end].isspace() and text[end] != "$":
                end += 1
            out.append((after, text[j:end]))
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{}`` or ``\\fbox{}`` (also ``\\boxed 5``), or None. Linear time."""
    boxes = _boxes(text)
    return boxes[-1][1] if boxes else None


def _same(a: str, b: str) -> bool:
    from rewards.normalize import normalize, parse_rational

    if a == b:
        return True
    if len(a) > MAX_LINE_CHARS or len(b) > MAX_LINE_CHARS:
        return False
    if normalize(a) == normalize(b):
        return True
    ra, rb = parse_rational(a), parse_rational(b)
    return ra is not None and rb is not None and ra[0] == rb[0]


def final_boxed(text: str) -> str | None:
    """The boxed final answer: the distinct boxes of the last box's paragraph, joined by ``, ``."""
    boxes = [(start, content) for start, content in _boxes(text) if content]
    if not boxes:
        return None
    paragraph = text.rfind("\n\n", 0, boxes[-1][0]) + 1
    distinct: list[str] = []
    for start, content in boxes:
        if start >= paragraph and len(distinct) <= _MAX_BOXES and not any(_same(content, d) for d in distinct):
            distinct.append(content)
    return distinct[0] if len(distinct) == 1 else ", ".join(distinct)


def unwrap_math(text: str) -> str:
    """Strip surrounding whitespace and inline-math delimiters; take the first math span if any."""
    s = text.strip()
    for open_, close in _MATH_OPEN:
        i = s.find(open_)
        if i == -1:
            continue
        j = s.find(close, i + len(open_))
        if j == -1:
            continue
        return s[i + len(open_):j].strip()
    return s


def _cut_sentence(s: str) -> str:
    """Drop what follows the answer on its line: "I hope it is correct", a sentence after ". "."""
    hope = s.lower().find("i hope it is correct")
    if hope != -1:
        s = s[:hope]
    for sep in (". ", ".\t"):
        k = s.find(sep)
        if k != -1:
            s = s[:k]
    return s.strip().rstrip(".").strip()


def _strip_filler(s: str) -> str:
    s = s.strip().lstrip("*:").strip()
    changed = True
    while changed and s:
        changed = False
        for word in _FILLER:
            if s[:len(word)].lower() == word and (len(s) == len(word) or not s[len(word)].isalpha()):
                s = s[len(word):].lstrip(" \t*:")
                changed = True
                break
    return s.strip()


def _last_marker(text: str, lenient: bool) -> tuple[str, int] | None:
    best: tuple[str, int] | None = None
    for source, pattern in _LENIENT_MARKERS if lenient else _MARKERS:
        m = None
        for m in pattern.finditer(text):
            pass
        if m is not None and (best is None or m.end() > best[1]):
            best = (source, m.end())
    return best


def _marked_answer(text: str, lenient: bool) -> tuple[str, str] | None:
    found = _last_marker(text, lenient)
    if found is None:
        return None
    source, end = found
    line_end = text.find("\n", end, end + MAX_LINE_CHARS)
    line = text[end:line_end if line_end != -1 else end + MAX_LINE_CHARS]
    line = line.strip().lstrip(":").strip()
    if lenient:
        line = _strip_filler(line.strip("*").strip())
    if line in ("", "$$", "\\["):
        # "Final Answer:\n$$ 5 $$" -- the answer is on the next lines
        tail = text[end:end + MAX_LINE_CHARS]
        math = _last_math(tail, first=True)
        if math:
            return math, source
        return None
    answer = unwrap_math(line)
    if answer == line.strip():
        answer = _cut_sentence(answer)
    answer = answer.strip().strip("*").strip().rstrip(".").strip()
    inner = last_boxed(answer)
    if inner:
        answer = inner
    return (answer, source) if answer else None


_DELIM = re.compile(r"\\\$|\$\$|\$|\\\[|\\\]|\\\(|\\\)")
_CLOSE = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}
_PROSE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")  # a word that is not a LaTeX command


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    """Every top-level math span ``(start, end, content)``, left to right: one pass over the delimiters."""
    spans = []
    opener, start = None, 0
    for m in _DELIM.finditer(text):
        d = m.group()
        if d == "\\$":  # an escaped dollar is a currency sign, inside or outside math
            continue
        if opener is None:
            if d in _CLOSE:
                opener, start = d, m.start()
        elif d == _CLOSE[opener]:
            content = text[start + len(opener):m.start()].strip()
            if opener == "$" and content[:1].isdigit() and _PROSE.search(content):
                opener, start = d, m.start()  # "$50. Her ... = $": the first $ was a currency sign
                continue
            spans.append((start, m.end(), content))
            opener = None
    return spans


def _last_math(text: str, first: bool = False) -> str | None:
    """The last math span (``first``: the first one); spans joined by "and"/","/"or" in the same
    sentence as the last one are part of it ("$x = 2$ and $x = -3$" -> "x = 2, x = -3")."""
    spans = [s for s in _math_spans(text) if s[2]]
    if not spans:
        return None
    if first:
        return spans[0][2]
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        between = text[prev[1]:group[0][0]].strip().lower()
        if between in (",", "and", ", and", "or", ", or", ";"):
            group.insert(0, prev)
        else:
            break
    return ", ".join(s[2] for s in group)


def _last_number(text: str) -> str | None:
    tail = text[-MAX_TAIL_CHARS:]
    last = None
    for last in _NUMBER.finditer(tail):
        pass
    return last.group(0).rstrip(",") if last is not None else None


def find_answer(completion: str, last_number_fallback: bool = False, extraction: str = "marked") -> Extraction:
    """The answer in ``completion`` and where it came from (see the module docstring)."""
    if extraction == "answer":
        s = completion.strip()
        inner = last_boxed(s)
        if inner and s.startswith(("\\boxed", "\\fbox", "$\\boxed")):
            s = inner
        return Extraction(s or None, "answer" if s else "none")
    lenient = extraction == "lenient"
    boxed = final_boxed(completion)
    if boxed:
        return Extraction(boxed, "boxed")
    if lenient and _BOX.search(completion[-MAX_TAIL_CHARS:]):
        return Extraction(None, "none")  # "... \\boxed{4": cut off inside its final answer
    marked = _marked_answer(completion, lenient)
    if marked is not None:
        return Extraction(marked[0], marked[1])
    if lenient:
        math = _last_math(completion[-4 * MAX_TAIL_CHARS:])
        if math:
            return Extraction(math, "math")
    if lenient or last_number_fallback:
        number = _last_number(completion)
        if number is not None:
            return Extraction(number, "last_number")
    return Extraction(None, "none")


def extract_answer(completion: str, last_number_fallback: bool = False, extraction: str = "marked") -> str | None:
    """The final answer found in ``completion`` (see the module docstring), or None."""
    return find_answer(completion, last_number_fallback, extraction).answer


def gold_answer(gold: str) -> str:
    """The answer in a gold as users have it: a worked solution's last ``\\boxed{}``, a GSM8K answer
    field's ``#### N``, or the gold itself without math delimiters around it."""
    s = gold.strip()
    if "\\boxed" in s or "\\fbox" in s:
        inner = last_boxed(s)
        if inner:
            return inner
    k = s.rfind("####")
    if k != -1:
        line = s[k + 4:k + 4 + MAX_LINE_CHARS].split("\n", 1)[0].strip()
        if line:
            return line
    for open_, close in _MATH_OPEN:
        if s.startswith(open_) and s.endswith(close) and len(s) > len(open_) + len(close):
            inner = s[len(open_):-len(close)]
            if open_ not in inner:
                return inner.strip()
    return s.rstrip(".").strip() if s.endswith(".") and not s.endswith("..") else s
