"""String normalisation of answers, and the exact-rational fast path.

``normalize`` strips what never changes an answer's value: math delimiters, spacing commands,
``\\left``/``\\right``, ``\\text{}`` wrappers, units, degree signs, ``\\$``. ``parse_rational`` reads
integers, fractions (``\\frac``, ``\\dfrac``, ``\\tfrac``, ``a/b``), decimals, mixed numbers,
percentages, scientific notation and thousands separators as an exact ``Fraction`` with regexes and
integer arithmetic only: no sympy, no subprocess. This is the path most numeric answers take.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

_UNIT_WORDS = (
    "cm|mm|km|m|meters?|metres?|centimeters?|kilometers?|inch(?:es)?|in|ft|feet|foot|yards?|miles?|"
    "units?|sq|square|cubic|degrees?|deg|radians?|rad|seconds?|secs?|s|minutes?|mins?|hours?|hrs?|h|"
    "days?|weeks?|months?|years?|dollars?|cents?|kg|g|grams?|kilograms?|lbs?|pounds?|ounces?|oz|"
    "liters?|litres?|l|ml|gallons?|mph|km/h|people|persons?|students?|apples?|books?|pages?|points?|"
    "ways?|times|items?|pieces?|tickets?|cookies?|marbles?|boxes?|eggs?|cars?|children|euros?|"
    "kids?|boys?|girls?|men|women|numbers?|integers?|values?|solutions?|pairs?|triangles?|squares?"
)
_TEXT_UNIT = re.compile(r"\\(?:text|textnormal|mbox|mathrm|textbf|textit|mathbf)\s*\{\s*(?:" + _UNIT_WORDS + r")\s*\}(\^\{?\d\}?)?",
                        re.IGNORECASE)
_TRAILING_UNIT = re.compile(r"(?<=[\d}\s])(?:\s*\b(?:" + _UNIT_WORDS + r")\b\.?(?:\^\{?\d\}?|\d)?)+\s*$", re.IGNORECASE)
_TEXT_WRAP = re.compile(r"\\(?:text|textnormal|mbox|mathrm|textbf|textit|mathbf|operatorname)\s*\{([^{}]*)\}")
_PERCENT_WORD = re.compile(r"(?<=[\d\s])(?:percent|pct)\.?$", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_RELATIONS = {"\\leq": "<=", "\\le": "<=", "≤": "<=", "\\geq": ">=", "\\ge": ">=", "≥": ">=", "\\neq": "!=",
              "\\ne": "!=", "≠": "!=", "\\lt": "<", "\\gt": ">"}
_RELATION_SPACING = re.compile(r" ?(<=|>=|!=|<|>) ?")
_RELATION = re.compile(r"\\(?:leq|geq|neq|le|ge|ne|lt|gt)(?![a-zA-Z])|[≤≥≠]")
_NUMBER_WORDS = re.compile(r"^([-+]?\d[\d,]*(?:\.\d+)?%?) (?:(?!(?:and|not|nor|plus|minus|times|than)\b)[a-z]{3,12} ?){1,3}$")
_DROP = [r"\left", r"\right", r"\displaystyle", r"\bigl", r"\bigr", r"\Bigl", r"\Bigr", r"\big", r"\Big",
         r"\!", r"\,", r"\;", r"\:", r"\quad", r"\qquad", r"\ ", r"\limits", "^\\circ", "^{\\circ}", "°",
         r"\$", "\\%"]


def normalize(answer: str) -> str:
    """Canonical string form of an answer: the cheapest equality test, and the parsers' input.

    Whitespace runs are collapsed first, so no later pattern sees a run longer than one character.
    Short answers are memoised (the fast path looks at each side several times)."""
    return _normalize_cached(answer) if len(answer) <= 500 else _normalize(answer)


def _normalize(answer: str) -> str:
    s = _SPACES.sub(" ", answer).strip()
    if s.startswith("$") and s.endswith("$"):
        s = s.strip("$")
    for open_, close in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(open_) and s.endswith(close):
            s = s[len(open_):-len(close)]
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac").replace("{,}", ",")
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ").replace("\\leqslant", "\\leq").replace("\\geqslant", "\\geq")
    s = s.replace("\\varnothing", "\\emptyset").replace("\\{\\}", "\\emptyset").replace("∅", "\\emptyset")
    s = s.replace("\\%", "%").replace("²", "^2").replace("³", "^3").replace("€", "").replace("£", "")
    s = s.replace("\\\\", "\x00")  # a LaTeX row break is not "\\ " (a space)
    for token in _DROP:
        if token == "\\%":
            continue
        s = s.replace(token, " " if token in (r"\quad", r"\qquad", r"\ ") else "")
    s = s.replace("\x00", "\\\\")
    s = _TEXT_UNIT.sub("", s)
    for _ in range(3):  # \text{...} wrappers, innermost first
        s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("$", "")
    s = _RELATION.sub(lambda m: _RELATIONS[m.group()], s)  # one spelling per relation: x \\geq 5 == x >= 5
    s = _RELATION_SPACING.sub(r" \1 ", s)
    s = _SPACES.sub(" ", s).strip()
    s = s.rstrip(".").strip()
    s = _PERCENT_WORD.sub("%", s).strip()
    if m := _NUMBER_WORDS.match(s):  # "72 clips", "3 bolts": a number and the thing counted
        s = m.group(1)
    stripped = _TRAILING_UNIT.sub("", s).strip()
    if stripped and stripped != s and re.search(r"\d", stripped):
        s = stripped
    return s


_normalize_cached = lru_cache(maxsize=4096)(_normalize)


# ---------------------------------------------------------------- exact rationals (fast path)

_INT = r"[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?: \d{3})+|\d+"
_DEC = rf"(?:{_INT})(?:\.\d*)?|\.\d+"
_NUM = re.compile(rf"^({_DEC})$")
_SCI = re.compile(rf"^({_DEC})\s*(?:[eE]([+-]?\d+)|(?:\\times|\\cdot|\*|×|x)\s*10\s*\^\s*\{{?\s*([+-]?\d+)\s*\}}?)$")
_POW10 = re.compile(r"^10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")
_FRAC = re.compile(rf"^\\frac\s*\{{\s*([-+]?(?:{_DEC}))\s*\}}\s*\{{\s*([-+]?(?:{_DEC}))\s*\}}$|^\\frac\s*(\d)\s*(\d)$")
_SLASH = re.compile(rf"^({_DEC})\s*/\s*({_DEC})$")
_DECIMAL_COMMA = re.compile(r"^(0|[1-9]\d{3,}),(\d+)$")  # "0,111", "1000,99": never a thousands separator
_REPEATING = re.compile(r"^(\d*)\.(\d*)\\overline\s*\{(\d{1,50})\}$")
_MIXED = re.compile(rf"^(\d+)\s*(?:\\frac\s*\{{\s*(\d+)\s*\}}\s*\{{\s*(\d+)\s*\}}|\s(\d+)\s*/\s*(\d+))$")


def _dec(s: str) -> Fraction:
    return Fraction(s.replace(",", "").replace(" ", ""))


def parse_rational(answer: str, max_exponent: int = 1000) -> tuple[Fraction, bool] | None:
    """``(value, is_percent)`` when ``answer`` is a plain exact number, else None. Never raises."""
    if not answer or len(answer) > 400:
        return None
    s = normalize(answer)
    if not s or len(s) > 200:
        return None
    percent = s.endswith("%")
    if percent:
        s = s[:-1].strip()
    sign = 1
    while s[:1] in ("-", "+", "−"):
        sign = -sign if s[0] != "+" else sign
        s = s[1:].strip()
    if s.startswith("{") and s.endswith("}") and s.count("{") == 1:
        s = s[1:-1].strip()
    value = _unsigned(s, max_exponent)
    if value is None:
        return None
    return sign * value, percent


def _unsigned(s: str, max_exponent: int) -> Fraction | None:
    if m := _NUM.match(s):
        return _dec(m.group(1))
    if m := _DECIMAL_COMMA.match(s):
        return Fraction(f"{m.group(1)}.{m.group(2)}")
    if m := _REPEATING.match(s):  # 0.1\overline{6} = 1/6
        whole, fixed, rep = m.groups()
        value = Fraction(int(whole or 0)) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
        return value + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
    if m := _FRAC.match(s):
        num, den = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
        den_v = _dec(den)
        return _dec(num) / den_v if den_v else None
    if m := _SLASH.match(s):
        den_v = _dec(m.group(2))
        return _dec(m.group(1)) / den_v if den_v else None
    if m := _MIXED.match(s):
        whole = int(m.group(1))
        num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
        return whole + Fraction(int(num), int(den)) if int(den) else None
    if m := _SCI.match(s):
        exp = int(m.group(2) if m.group(2) is not None else m.group(3))
        if abs(exp) > max_exponent:
            return None
        return _dec(m.group(1)) * Fraction(10) ** exp
    if m := _POW10.match(s):
        exp = int(m.group(1))
        return Fraction(10) ** exp if abs(exp) <= max_exponent else None
    return None


def decimal_places(answer: str) -> int | None:
    """Digits after the decimal point when ``answer`` is a plain decimal (an approximation), else None."""
    m = re.fullmatch(r"[-+]?\d[\d,]*\.(\d+)|[-+]?\.(\d+)", normalize(answer).rstrip("%").strip())
    if not m:
        return None
    return len(m.group(1) or m.group(2))


# ---------------------------------------------------------------- choice letters and text answers

_CHOICE = re.compile(r"^\(?\s*([A-E])\s*\)?\.?$|^(?:option|choice)\s+\(?([A-E])\)?$")
_CHOICE_ANY_CASE = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?\.?$|^(?:option|choice)\s+\(?([A-Ea-e])\)?$", re.IGNORECASE)
_CHOICE_LEAD = re.compile(r"^(?:\(([A-E])\)|([A-E])\))\s?(.{0,200})$")  # "(D) 3/4", "B) 12", AMC "(E) 42"
_OTHER_CHOICE = re.compile(r"\(\s?[A-E]\s?\)|\b[A-E]\)|\bor\b", re.IGNORECASE)
_TEXT = re.compile(r"^[A-Za-z][A-Za-z' -]{0,200}$")
_WORD3 = re.compile(r"[A-Za-z]{3}")


def choice_letter(answer: str, any_case: bool = False) -> str | None:
    """The multiple-choice letter ``answer`` states (``B``, ``(B)``, ``B)``, ``\\text{(B)}``, ``(B) 12``), or None.

    A lone lowercase ``a``-``e`` counts only with ``any_case`` (when the gold is a choice), so a gold
    ``e`` stays Euler's number. A letter followed by another choice or an "or" is not one answer."""
    s = normalize(answer)
    if m := (_CHOICE_ANY_CASE if any_case else _CHOICE).match(s):
        return (m.group(1) or m.group(2)).upper()
    if any_case and (m := _CHOICE_LEAD.match(s)) and not _OTHER_CHOICE.search(m.group(3)):
        return m.group(1) or m.group(2)
    return None


def text_answer(answer: str) -> str | None:
    """Case-folded words when ``answer`` is a text answer ("No solution", ``\\text{Devon}``), else None."""
    s = normalize(answer)
    if _TEXT.match(s) and _WORD3.search(s):
        return " ".join(s.casefold().split())
    return None
