"""Is a predicted answer equivalent to the gold answer? From cheap to expensive.

1. normalised strings equal, or the same text answer case-insensitively; 2. exact rationals
(``rewards.normalize.parse_rational``); 3. structure: multiple-choice letters, tuples (ordered, bracket
types matter), sets and solution lists (unordered), intervals and unions (bracket types matter),
relations (as intervals), matrices, equations and assignments (an equation is never one of its
sides); 4. scalars with sympy. Precision before recall: exact values are equal when their difference
is symbolically 0 or evaluates to 0 with sympy's adaptive precision (so ``\pi+10^{-50}`` is not
``\pi``); expressions with variables are compared at random points drawn from the OS's entropy
(no answer can anticipate them); a decimal matches a non-terminating or irrational value only
within ``rel_tol`` (relative, 1e-6 by default), or correctly rounded when ``accept_rounded_decimals``.

``compare(gold, pred, cfg) -> (equal, reason)``; runs inside worker processes (imports sympy).
Raises ``GoldError`` when the gold answer itself cannot be read.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import sympy

from rewards.config import VerifyConfig
from rewards.latex_parser import LimitExceeded, ParseError, Parsed, parse_expression
from rewards.normalize import choice_letter, decimal_places, normalize, parse_rational, text_answer


class GoldError(ValueError):
    """The gold answer could not be parsed."""


@dataclass
class Answer:
    kind: str
    """``choice`` | ``scalar`` | ``tuple`` | ``list`` | ``set`` | ``interval`` | ``matrix`` | ``equation`` | ``text``."""
    value: object
    text: str
    name: str | None = None
    """Equations: the assigned name when the left side is one (``x``, ``f(x)``, ``x_1``)."""
    number: Parsed | None = None
    """Equations: the stated value when the last side has no variables (``m+n = 73``, ``6/2 = 3``)."""


_REL = re.compile(r"\\leq|\\geq|\\neq|\\le(?![a-z])|\\ge(?![a-z])|\\ne(?![a-z])|<=|>=|!=|≤|≥|≠|<|>|\\lt|\\gt")
_REL_MAP = {"\\leq": "<=", "\\le": "<=", "<=": "<=", "≤": "<=", "\\geq": ">=", "\\ge": ">=", ">=": ">=",
            "≥": ">=", "<": "<", "\\lt": "<", ">": ">", "\\gt": ">", "\\neq": "!=", "\\ne": "!=", "!=": "!=", "≠": "!="}
_NAME = re.compile(r"^(?:(?:[A-Za-z]|\\[a-zA-Z]+)(?:_\{?\w{1,8}\}?)?(?:\s?\(\s?[a-z0-9.+-]{1,8}(?:\s?,\s?[a-z0-9.+-]{1,8}){0,3}\s?\))?"
                   r"|(?:m\s?)?\\angle\s?[A-Z]{1,3}|\\overline\{[A-Z]{2}\}|[A-Z]{2})$")
"""The left side of an assignment: ``x``, ``x_1``, ``\\theta``, ``f(x)``, ``f(2)``, ``\\angle ABC``, ``AB``."""
_MEMBER = re.compile(r"^[A-Za-z]\s?\\in\s?")
_APPROX = re.compile(r"\\approx|≈|\\simeq")
_OR = re.compile(r"\s(?:or|\\lor|\\vee)\s")
_AND = re.compile(r"\s(?:or|and|\\lor|\\vee)\s")


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside of brackets and braces."""
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and text[i + 1:i + 2] in ("{", "}"):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0 and text.startswith(sep, i):
            parts.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _balanced_inside(s: str) -> bool:
    depth = 0
    for c in s[1:-1]:
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0:
            return False
    return depth == 0


def parse_answer(raw: str, cfg: VerifyConfig, lowercase_choice: bool = False) -> Answer:
    """Classify and parse an answer string into a comparable structure.

    A lone capital A-E is a multiple-choice letter; a lowercase one only when ``lowercase_choice``
    (the gold is a choice), so a gold ``e`` stays Euler's number."""
    s = normalize(raw)
    if len(s) > cfg.max_answer_chars:
        raise LimitExceeded(f"answer longer than max_answer_chars={cfg.max_answer_chars}")
    if (letter := choice_letter(s, any_case=lowercase_choice)) is not None:
        return Answer("choice", letter, s)
    if parse_rational(s, cfg.max_exponent) is not None:  # "1,000" is a number, not a list
        return Answer("scalar", _scalar(s, cfg), s)
    if _APPROX.search(s):  # "\\frac{22}{7} \\approx 3.14": the exact value counts
        s = _APPROX.split(s, 1)[0].strip()
        if not s:
            raise ParseError("nothing before \\approx")
    s = _MEMBER.sub("", s)  # "x \\in [1, 2)" is the interval
    if s in ("\\emptyset", "\\{ \\}"):
        return Answer("set", [], s)
    if (m := re.match(r"^\\begin\{([pbvB]?matrix)\}(.*)\\end\{\1\}$", s, re.DOTALL)):
        rows = [r for r in (x.strip() for x in m.group(2).split("\\\\")) if r]
        cells = [[_scalar(c.strip(), cfg) for c in r.split("&")] for r in rows]
        return Answer("matrix", cells, s)
    if "\\cup" in s or re.search(r"[\])]\s?U\s?[\[(]", s):
        pieces = re.split(r"\\cup|(?<=[\])])\s?U\s?(?=[\[(])", s)
        return Answer("interval", sympy.Union(*[_interval(p.strip(), cfg) for p in pieces]), s)
    if s.startswith("\\{") and s.endswith("\\}"):
        return Answer("set", [_scalar(p, cfg) for p in split_top(s[2:-2]) if p], s)
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced_inside(s):
        inner = split_top(s[1:-1])
        if len(inner) == 2 and (s[0] != s[-1].translate(str.maketrans(")]", "([")) or "\\infty" in s or "oo" in s):
            return Answer("interval", _interval(s, cfg), s)
        if len(inner) >= 2:
            return Answer("tuple", [_scalar(p, cfg) for p in inner], s)
    if s.count("\\pm") == 1 and "," not in s:  # "1 \\pm \\sqrt{2}": both values, unordered
        plus, minus = s.replace("\\pm", "+"), s.replace("\\pm", "-")
        return Answer("list", [parse_answer(plus, cfg), parse_answer(minus, cfg)], s)
    parts = split_top(s)
    if len(parts) >= 2 and all(parts):
        return Answer("list", [parse_answer(p, cfg) for p in parts], s)
    if _REL.search(s):
        pieces = _OR.split(s)
        return Answer("interval", sympy.Union(*[_inequality(p.strip(), cfg) for p in pieces]), s)
    if _AND.search(s):  # "x=2 or x=3", "3 and 5", "3 or 4": a list of candidates
        return Answer("list", [parse_answer(p, cfg) for p in _AND.split(s)], s)
    sides = split_top(s, "=")
    if len(sides) >= 2:
        return _equation(sides, s, cfg)
    return Answer("scalar", _scalar(s, cfg), s)


def _equation(sides: list[str], s: str, cfg: VerifyConfig) -> Answer:
    """``x = 3`` / ``x = \\frac{-b}{2a} = -\\frac32`` (an assignment: name ``x``, value the last side),
    ``6/2 = 3`` (a numeric chain: value 3), else an equation (``y^2 = 4x``, ``m+n = 73``, ``7 = 11a+c``)."""
    if not all(sides):
        raise ParseError("empty side of an equation")
    is_name = _NAME.match(sides[0]) is not None
    try:
        lhs = [_scalar(sides[0], cfg)]
    except ParseError:
        if not is_name:
            raise
        lhs = [Parsed(sympy.Symbol(sides[0].replace(" ", "")))]  # \\angle ABC names a quantity
    parsed = lhs + [_scalar(x, cfg) for x in sides[1:]]
    identity = len({x.replace(" ", "") for x in sides}) == 1  # "x = x", "0 = 0" state nothing
    name = number = None
    if not identity and is_name:
        lhs = parsed[0].expr
        if not (lhs.is_Symbol and lhs in parsed[-1].expr.free_symbols):  # "x = 2x - x" assigns nothing
            name = sides[0].replace(" ", "")
    if not identity and not any(_has_letters(x) for x in sides):
        if all(scalars_equal(parsed[-1], p, cfg) for p in parsed[:-1]):
            number = parsed[-1]
    return Answer("equation", (parsed[0], parsed[-1]), s, name=name, number=number)


def _has_letters(text: str) -> bool:
    return re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", text)) is not None


def _scalar(text: str, cfg: VerifyConfig) -> Parsed:
    text = text.strip()
    rational = parse_rational(text, cfg.max_exponent)
    if rational is not None:
        value, _ = rational
        places = decimal_places(text)
        return Parsed(sympy.Rational(value.numerator, value.denominator), bool(places), places or 0)
    percent = text.endswith("%")
    parsed = parse_expression(text.rstrip("%").strip() if percent else text, cfg)
    return parsed


def _interval(s: str, cfg: VerifyConfig) -> sympy.Set:
    if not (s[:1] in "([" and s[-1:] in ")]"):
        raise ParseError(f"not an interval: {s[:40]!r}")
    a, b = split_top(s[1:-1])
    lo, hi = _scalar(a, cfg).expr, _scalar(b, cfg).expr
    return sympy.Interval(lo, hi, left_open=s[0] == "(", right_open=s[-1] == ")")


def _inequality(s: str, cfg: VerifyConfig) -> sympy.Set:
    """``x > 3``, ``3 < x``, ``1 < x \\le 2``, ``x \\neq 2`` -> the set of x (one variable only)."""
    pieces = _REL.split(s)
    ops = [_REL_MAP[o] for o in _REL.findall(s)]
    exprs = [_scalar(p, cfg).expr for p in pieces]
    var = [e for e in exprs if e.is_Symbol]
    if len(var) != 1 or len(exprs) > 3:
        raise ParseError("only inequalities in one variable are compared")
    x = var[0]
    result = sympy.Reals
    for (lhs, rhs), op in zip(zip(exprs, exprs[1:]), ops):
        if lhs == x:
            bound, op = rhs, op
        elif rhs == x:
            bound, op = lhs, {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "!=": "!="}[op]
        else:
            raise ParseError("each inequality must have the variable on one side")
        if bound.free_symbols:
            raise ParseError("bounds must be numbers")
        piece = {"<": sympy.Interval.open(-sympy.oo, bound), "<=": sympy.Interval(-sympy.oo, bound),
                 ">": sympy.Interval.open(bound, sympy.oo), ">=": sympy.Interval(bound, sympy.oo),
                 "!=": sympy.Union(sympy.Interval.open(-sympy.oo, bound), sympy.Interval.open(bound, sympy.oo))}[op]
        result = result.intersect(piece)
    return result


# ---------------------------------------------------------------- comparison


def scalars_equal(gold: Parsed, pred: Parsed, cfg: VerifyConfig) -> bool:
    g, p = gold.expr, pred.expr
    if g == p:
        return True
    if g.is_Rational and p.is_Rational:
        return _decimal_matches(gold, pred, cfg)
    if not g.free_symbols and not p.free_symbols:
        return _numbers_equal(gold, pred, cfg)
    verdict = _random_points_equal(g, p, cfg)
    if verdict is not None:
        return verdict
    return sympy.simplify(g - p) == 0  # no usable test point (domain problems): ask sympy


def _terminating(x: sympy.Expr) -> bool:
    """A rational whose decimal expansion ends (denominator 2^a 5^b)."""
    if not x.is_Rational:
        return False
    q = int(x.q)
    for f in (2, 5):
        while q % f == 0:
            q //= f
    return q == 1


def _decimal_matches(gold: Parsed, pred: Parsed, cfg: VerifyConfig) -> bool:
    """Two different numbers where one side may be a decimal approximation of the other.

    Only a decimal standing for a value it cannot write exactly (irrational, or a non-terminating
    rational) gets a tolerance: relative ``rel_tol`` (plus ``abs_tol``), or, when
    ``accept_rounded_decimals``, the value correctly rounded to the decimal's own digits (>= 2)."""
    if gold.has_decimal == pred.has_decimal:
        return False  # both exact (and different), or both decimals (compared exactly)
    approx, exact = (gold, pred) if gold.has_decimal else (pred, gold)
    if not approx.expr.is_Rational or _terminating(exact.expr):
        return False  # a terminating value has an exact decimal: no tolerance
    ev, av = sympy.N(exact.expr, 40), sympy.N(approx.expr, 40)
    if not (ev.is_real and av.is_real):
        return False
    diff = abs(ev - av)
    if diff <= max(cfg.rel_tol * abs(ev), cfg.abs_tol):
        return True
    return bool(cfg.accept_rounded_decimals and approx.decimal_places >= 2
                and diff <= sympy.Rational(1, 2) * sympy.Integer(10) ** -approx.decimal_places * (1 + 1e-9))


def _zero_at_precision(d: sympy.Expr, cfg: VerifyConfig, digits: int | None = None) -> bool | None:
    """Is the closed-form number ``d`` zero? Exact when sympy decides it, else sympy's adaptive-precision
    evaluation: a nonzero value with known digits is nonzero; one that vanishes to ``digits`` (default
    ``max_exponent`` + 100) digits is zero. None: not a finite number."""
    if d == 0:
        return True
    if d.is_Rational:
        return False
    if d.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    v = d.evalf(30, maxn=digits or cfg.max_exponent + 100)
    if not v.is_number or v.has(sympy.nan, sympy.zoo):
        return None
    if v == 0:
        return True
    parts = [x for x in (sympy.re(v), sympy.im(v)) if x != 0]
    return all(getattr(x, "_prec", 100) <= 10 for x in parts)  # "0.e-852": no correct digit, i.e. zero


def _numbers_equal(gold: Parsed, pred: Parsed, cfg: VerifyConfig) -> bool:
    g, p = gold.expr, pred.expr
    special = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)
    if g.has(*special) or p.has(*special):
        return bool(g == p) and not g.has(sympy.nan, sympy.zoo)
    if gold.has_decimal != pred.has_decimal and (g.is_Rational or p.is_Rational):
        return _decimal_matches(gold, pred, cfg)  # 6.2832 vs 2\\pi: relative precision
    d = sympy.expand(g - p) if g.is_Add or p.is_Add else g - p
    # 100 digits, unless a constant is tiny or huge enough to hide a difference below that (\\pi + 10^{-500})
    digits = None if _has_extreme_constant(g) or _has_extreme_constant(p) else 100
    return bool(_zero_at_precision(d, cfg, digits))


_RNG = random.SystemRandom()


def _has_extreme_constant(e: sympy.Expr, limit: int = 60) -> bool:
    """Does ``e`` contain a constant subexpression outside 10^-limit .. 10^limit (10^{-200}, e^{-500}, 90!)?"""
    for node in sympy.preorder_traversal(e):
        if node.is_number and not node.is_Integer and node.is_finite is not False:
            if node.is_Rational:
                if max(int(node.p).bit_length(), int(node.q).bit_length()) > 3.33 * limit:
                    return True
                continue
            v = abs(node.evalf(5))
            if v.is_number and v != 0 and (v < sympy.Float(10) ** -limit or v > sympy.Float(10) ** limit):
                return True
        elif node.is_Integer and int(node).bit_length() > 3.33 * limit:
            return True
    return False


def _random_point() -> sympy.Rational:
    """A random rational in (0.2, 3.2) with 53 random bits, from the OS's entropy."""
    return sympy.Rational(_RNG.getrandbits(53), 2**53) * 3 + sympy.Rational(1, 5)


def _random_points_equal(g: sympy.Expr, p: sympy.Expr, cfg: VerifyConfig, trials: int = 4) -> bool | None:
    """Compare at random points nobody can predict, exactly where possible (rational arithmetic), else
    with adaptive-precision ``evalf`` of the difference (``_zero_at_precision``). None when no point
    could be evaluated (the caller then asks ``simplify``)."""
    syms = sorted(g.free_symbols | p.free_symbols, key=str)
    diff = g - p
    if diff == 0:
        return True
    if diff.has(sympy.factorial, sympy.binomial, sympy.gamma) and sympy.combsimp(diff) == 0:
        return True  # (n-1)! vs n!/n: decided symbolically, cheaper than the gamma function at 100 digits
    # 100 digits at unpredictable points, unless a constant in the answers is tiny or huge enough to hide
    # below that (x + 10^{-200}(...)): then the full max_exponent + 100 digits
    digits = None if _has_extreme_constant(g) or _has_extreme_constant(p) else 100
    ok = 0
    for _ in range(trials * 3):
        point = {s: _random_point() for s in syms}
        try:
            d = diff.xreplace(point)
            zero = _zero_at_precision(d, cfg, digits)
        except (ZeroDivisionError, ValueError, TypeError, OverflowError):
            continue
        if zero is None:
            continue
        if not zero:
            return False
        ok += 1
        if ok >= trials:
            return True
    return None


def _equation_diff(eq: tuple[Parsed, Parsed]) -> sympy.Expr:
    return eq[0].expr - eq[1].expr


def _equation_vs_value(eq: Answer, value: Answer, cfg: VerifyConfig) -> bool:
    """``x = 3`` / ``f(x) = x^2`` vs ``3`` / ``x^2`` (an assignment's value), ``6/2 = 3`` vs ``3``; never
    ``7 = 11a+c`` vs ``11a+c`` or ``m+n = 73`` vs ``73`` (an equation is not one of its sides), nor ``0 = 0``."""
    if value.kind != "scalar":
        return False
    stated = eq.value[1] if eq.name is not None else eq.number
    return stated is not None and scalars_equal(stated, value.value, cfg)


def answers_equal(gold: Answer, pred: Answer, cfg: VerifyConfig) -> bool:
    gk, pk = gold.kind, pred.kind
    if gk == "choice" or pk == "choice":
        return gk == pk and gold.value == pred.value
    if gk == "equation" and pk != "equation":
        return _equation_vs_value(gold, pred, cfg)
    if pk == "equation" and gk != "equation":
        return _equation_vs_value(pred, gold, cfg)
    if gk == "equation" and pk == "equation":
        gr, pr = gold.value[1], pred.value[1]
        if gold.name is not None and gold.name == pred.name:
            return scalars_equal(gr, pr, cfg)
        dg, dp = _equation_diff(gold.value), _equation_diff(pred.value)
        if dg == 0 or dp == 0 or not dg.free_symbols or not dp.free_symbols:
            return False  # an identity or a numeric statement is not an equation to match
        if _random_points_equal(dg, sympy.Integer(0), cfg) or _random_points_equal(dp, sympy.Integer(0), cfg):
            return False  # an identity (both sides equal) is not an answer
        ratio = sympy.cancel(dg / dp)
        return bool(ratio.is_number and ratio != 0 and ratio.is_finite)
    if gk == "interval" or pk == "interval":
        gs, ps = _as_interval(gold), _as_interval(pred)
        if gs is None or ps is None:
            return False
        return bool(gs == ps) or (sympy.Complement(gs, ps) == sympy.S.EmptySet
                                  and sympy.Complement(ps, gs) == sympy.S.EmptySet)
    if gk == "matrix" or pk == "matrix":
        if gk != pk or len(gold.value) != len(pred.value):
            return False
        return all(len(gr) == len(pr) and all(scalars_equal(a, b, cfg) for a, b in zip(gr, pr))
                   for gr, pr in zip(gold.value, pred.value))
    seq = ("tuple", "list", "set")
    if gk in seq and pk in seq:
        g_items, p_items = gold.value, pred.value
        if len(g_items) != len(p_items):
            return False
        if gk == "tuple" and pk == "tuple" and (gold.text[0], gold.text[-1]) != (pred.text[0], pred.text[-1]):
            return False  # [1, 2] is not (1, 2)
        if {gk, pk} == {"tuple", "set"}:
            return False  # \\{1, 2\\} is not the point or interval (1, 2)
        if gk == "tuple" and pk in ("tuple", "list"):
            return all(_item_equal(a, b, cfg) for a, b in zip(g_items, p_items))
        return _unordered_equal(g_items, p_items, cfg)
    if gk == "scalar" and pk == "scalar":
        return scalars_equal(gold.value, pred.value, cfg)
    return False


def _as_interval(ans: Answer) -> sympy.Set | None:
    """Intervals as they are; a bracketed pair ``(1, 2)`` / ``[1, 2]`` read as an interval."""
    if ans.kind == "interval":
        return ans.value
    if ans.kind == "tuple" and len(ans.value) == 2 and ans.text[:1] in "([":
        lo, hi = ans.value[0].expr, ans.value[1].expr
        if lo.is_real and hi.is_real and bool(lo < hi):
            return sympy.Interval(lo, hi, left_open=ans.text[0] == "(", right_open=ans.text[-1] == ")")
    return None


def _as_answer(item: object) -> Answer:
    return item if isinstance(item, Answer) else Answer("scalar", item, "")


def _item_equal(a: object, b: object, cfg: VerifyConfig) -> bool:
    return answers_equal(_as_answer(a), _as_answer(b), cfg)


def _unordered_equal(gold: list, pred: list, cfg: VerifyConfig) -> bool:
    remaining = list(pred)
    for g in gold:
        for j, p in enumerate(remaining):
            if _item_equal(g, p, cfg):
                del remaining[j]
                break
        else:
            return False
    return True


def compare(gold: str, pred: str, cfg: VerifyConfig) -> tuple[bool, str]:
    """``(equal, reason)``. Raises GoldError when the gold answer is unreadable."""
    if normalize(gold) == normalize(pred):
        return True, "same normalised string"
    if (text := text_answer(gold)) is not None and text == text_answer(pred):
        return True, "same text answer"
    try:
        g = parse_answer(gold, cfg)
    except (ParseError, LimitExceeded, TypeError, ValueError) as e:
        raise GoldError(f"gold answer not parsable: {e}") from None
    try:
        p = parse_answer(pred, cfg, lowercase_choice=g.kind == "choice")
    except LimitExceeded as e:
        return False, f"answer refused: {e}"
    except (ParseError, TypeError, ValueError) as e:
        return False, f"answer not parsable: {e}"
    equal = answers_equal(g, p, cfg)
    return equal, f"{g.kind} vs {p.kind}: {'equivalent' if equal else 'different'}"
