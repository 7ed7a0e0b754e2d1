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

_UNIT_WORDS = (
    "cm|mm|km|m|meters?|metres?|centimeters?|kilometers?|inch(?:es)?|in|ft|feet|foot|yards?|miles?|"
    "units?|sq|square|cubic|degrees?|deg|radians?|rad|seconds?|secs?|s|minutes?|mins?|hours?|hrs?|h|"
    "days?|weeks?|months?|years?|dollars?|cents?|kg|g|grams?|kilograms?|lbs?|pounds?|ounces?|oz|"
    "liters?|litres?|l|ml|gallons?|mph|km/h|people|persons?|students?|apples?|books?|pages?|points?|"
    "ways?|times|percent|items?|pieces?|tickets?|cookies?|marbles?|boxes?|eggs?|cars?|children|"
    "kids?|boys?|girls?|men|women|numbers?|integers?|values?|solutions?|pairs?|triangles?|squares?"
)
_TEXT_UNIT = re.compile(r"\\(?:text|mbox|mathrm|textbf|textit|mathbf)\s*\{\s*(?:" + _UNIT_WORDS + r")\s*\}(\^\{?\d\}?)?",
                        re.IGNORECASE)
_TRAILING_UNIT = re.compile(r"(?<=[\d}\s])(?:\s*\b(?:" + _UNIT_WORDS + r")\b\.?(?:\^\{?\d\}?|\d)?)+\s*$", re.IGNORECASE)
_TEXT_WRAP = re.compile(r"\\(?:text|mbox|mathrm|textbf|textit|mathbf|operatorname)\s*\{([^{}]*)\}")
_DROP = [r"\left", r"\right", r"\displaystyle", r"\bigl", r"\bigr", r"\Bigl", r"\Bigr", r"\big", r"\Big",
         r"\!", r"\,", r"\;", r"\:", r"\quad", r"\qquad", r"\ ", r"\limits", "^\\circ", "^{\\circ}", "°",
         r"\$", "\\%"]


def normalize(answer: str) -> str:
    """Canonical string form of an answer: the cheapest equality test, and the parsers' input."""
    s = answer.strip()
    if s.startswith("$") and s.endswith("$"):
        s = s.strip("$")
    for open_, close in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(open_) and s.endswith(close):
            s = s[len(open_):-len(close)]
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ").replace("\\leqslant", "\\leq").replace("\\geqslant", "\\geq")
    s = s.replace("\\%", "%")
    for token in _DROP:
        if token == "\\%":
            continue
        s = s.replace(token, " " if token in (r"\quad", r"\qquad", r"\ ") else "")
    s = _TEXT_UNIT.sub("", s)
    for _ in range(3):  # \text{...} wrappers, innermost first
        s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("$", "")
    s = re.sub(r"\s+", " ", s).strip()
    s = s.rstrip(".").strip()
    stripped = _TRAILING_UNIT.sub("", s).strip()
    if stripped and stripped != s and re.search(r"\d", stripped):
        s = stripped
    return s


# ---------------------------------------------------------------- exact rationals (fast path)

_INT = r"\d+(?:,\d{3})*|\d{1,3}(?: \d{3})+"
_DEC = rf"(?:{_INT})(?:\.\d*)?|\.\d+"
_NUM = re.compile(rf"^({_DEC})$")
_SCI = re.compile(rf"^({_DEC})\s*(?:[eE]([+-]?\d+)|(?:\\times|\\cdot|\*|×|x)\s*10\s*\^\s*\{{?\s*([+-]?\d+)\s*\}}?)$")
_POW10 = re.compile(r"^10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")
_FRAC = re.compile(rf"^\\frac\s*\{{\s*([-+]?(?:{_DEC}))\s*\}}\s*\{{\s*([-+]?(?:{_DEC}))\s*\}}$|^\\frac\s*(\d)\s*(\d)$")
_SLASH = re.compile(rf"^({_DEC})\s*/\s*({_DEC})$")
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
