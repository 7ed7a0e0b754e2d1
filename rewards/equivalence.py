"""Is a predicted answer equivalent to the gold answer? From cheap to expensive.

1. normalised strings equal; 2. exact rationals (``rewards.normalize.parse_rational``);
3. structure: multiple-choice letters, tuples (ordered), sets (unordered), intervals and unions,
inequalities (as intervals), matrices, equations; 4. scalars with sympy: exact comparison for exact
values (``simplify`` of the difference, then high-precision numerics), a rounding / relative+absolute
tolerance only when one side is an inexact decimal approximation.

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
from rewards.normalize import decimal_places, normalize, parse_rational


class GoldError(ValueError):
    """The gold answer could not be parsed."""


@dataclass
class Answer:
    kind: str
    """``choice`` | ``scalar`` | ``tuple`` | ``list`` | ``set`` | ``interval`` | ``matrix`` | ``equation`` | ``text``."""
    value: object
    text: str


_CHOICE = re.compile(r"^\(?\s*([A-E])\s*\)?\.?$|^(?:[Oo]ption|[Cc]hoice)\s+([A-E])$")
_CHOICE_ANY_CASE = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?\.?$|^(?:option|choice)\s+([A-Ea-e])$", re.IGNORECASE)
_REL = re.compile(r"\\leq|\\geq|\\le(?![a-z])|\\ge(?![a-z])|<=|>=|≤|≥|<|>|\\lt|\\gt")
_REL_MAP = {"\\leq": "<=", "\\le": "<=", "<=": "<=", "≤": "<=", "\\geq": ">=", "\\ge": ">=", ">=": ">=",
            "≥": ">=", "<": "<", "\\lt": "<", ">": ">", "\\gt": ">"}


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
    if m := (_CHOICE_ANY_CASE if lowercase_choice else _CHOICE).match(s):
        return Answer("choice", (m.group(1) or m.group(2)).upper(), s)
    if parse_rational(s, cfg.max_exponent) is not None:  # "1,000" is a number, not a list
        return Answer("scalar", _scalar(s, cfg), s)
    if (m := re.match(r"^\\begin\{([pbvB]?matrix)\}(.*)\\end\{\1\}$", s, re.DOTALL)):
        rows = [r for r in (x.strip() for x in m.group(2).split("\\\\")) if r]
        cells = [[_scalar(c.strip(), cfg) for c in r.split("&")] for r in rows]
        return Answer("matrix", cells, s)
    if "\\cup" in s or re.search(r"[\])]\s*U\s*[\[(]", s):
        pieces = re.split(r"\\cup|(?<=[\])])\s*U\s*(?=[\[(])", s)
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
        pieces = re.split(r"\s+or\s+|\\lor|\\vee", s)
        return Answer("interval", sympy.Union(*[_inequality(p.strip(), cfg) for p in pieces]), s)
    sides = split_top(s, "=")
    if len(sides) >= 2:
        if not all(sides):
            raise ParseError("empty side of an equation")
        parsed = [_scalar(x, cfg) for x in sides]
        if not any(_has_letters(x) for x in sides[:-1]):  # "6/2 = 3": the value is the last side
            return Answer("scalar", parsed[-1], s)
        return Answer("equation", (parsed[0], parsed[-1]), s)
    return Answer("scalar", _scalar(s, cfg), s)


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
    """``x > 3``, ``3 < x``, ``1 < x \\le 2`` -> the set of x (one variable only)."""
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
            bound, op = lhs, {"<": ">", ">": "<", "<=": ">=", ">=": "<="}[op]
        else:
            raise ParseError("each inequality must have the variable on one side")
        if bound.free_symbols:
            raise ParseError("bounds must be numbers")
        piece = {"<": sympy.Interval.open(-sympy.oo, bound), "<=": sympy.Interval(-sympy.oo, bound),
                 ">": sympy.Interval.open(bound, sympy.oo), ">=": sympy.Interval(bound, sympy.oo)}[op]
        result = result.intersect(piece)
    return result


# ---------------------------------------------------------------- comparison


def scalars_equal(gold: Parsed, pred: Parsed, cfg: VerifyConfig) -> bool:
    g, p = gold.expr, pred.expr
    if g == p:
        return True
    if g.is_Rational and p.is_Rational and not (gold.has_decimal or pred.has_decimal):
        return False  # exact rationals that differ
    if not g.free_symbols and not p.free_symbols:
        return _numbers_equal(gold, pred, cfg)
    verdict = _random_points_equal(g, p)
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


def _numbers_equal(gold: Parsed, pred: Parsed, cfg: VerifyConfig) -> bool:
    g, p = gold.expr, pred.expr
    gv, pv = sympy.N(g, 50), sympy.N(p, 50)
    if not (gv.is_number and pv.is_number):
        return False
    special = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)
    if gv.has(*special) or pv.has(*special):
        return bool(gv == pv)
    inexact = [x for x in (gold, pred) if x.has_decimal]
    if not inexact:  # exact values: equal to 40 significant digits means equal
        scale = max(abs(gv), abs(pv), sympy.Integer(1))
        return bool(abs(sympy.N(g - p, 60)) <= sympy.Float(10) ** -40 * scale)
    diff, scale = abs(gv - pv), max(abs(gv), abs(pv))
    if len(inexact) == 1:
        approx, exact = (gold, pred) if gold.has_decimal else (pred, gold)
        if (approx.decimal_places >= 2 and not _terminating(exact.expr)
                and diff <= sympy.Rational(1, 2) * sympy.Integer(10) ** -approx.decimal_places * (1 + 1e-9)):
            return True  # correctly rounded decimal of an irrational / repeating value
    elif gv.is_Rational and pv.is_Rational:
        return False
    return bool(diff <= max(cfg.rel_tol * scale, cfg.abs_tol))


def _random_points_equal(g: sympy.Expr, p: sympy.Expr, trials: int = 5) -> bool | None:
    """Compare at random rational points, exactly where possible (``subs`` keeps rationals exact),
    else with sympy's adaptive-precision ``evalf`` of the difference, so ``(x+2)^{299}+1`` is not
    "equal" to ``(x+2)^{299}`` however large both are. None when no point could be evaluated."""
    syms = sorted(g.free_symbols | p.free_symbols, key=str)
    diff = g - p
    rng = random.Random(0)
    ok = 0
    for _ in range(trials * 3):
        point = {s: sympy.Rational(rng.randint(300, 2700), 1000) for s in syms}
        try:
            d = diff.subs(point)
            if d.is_Rational:
                if d != 0:
                    return False
                ok += 1
                continue
            gv = g.subs(point).evalf(30)
            dv = d.evalf(30, maxn=400)
            if not (dv.is_number and gv.is_number) or dv.has(sympy.nan, sympy.zoo) or gv.has(sympy.nan, sympy.zoo):
                continue
        except (ZeroDivisionError, ValueError, TypeError, OverflowError):
            continue
        if abs(dv) > sympy.Float(10) ** -20 * max(1, abs(gv)):
            return False
        ok += 1
        if ok >= trials:
            return True
    return True if ok >= trials else None


def _equation_diff(eq: tuple[Parsed, Parsed]) -> sympy.Expr:
    return eq[0].expr - eq[1].expr


def answers_equal(gold: Answer, pred: Answer, cfg: VerifyConfig) -> bool:
    gk, pk = gold.kind, pred.kind
    if gk == "choice" or pk == "choice":
        return gk == pk and gold.value == pred.value
    if gk == "equation" and pk == "scalar":  # gold "x = 3", pred "3"
        lhs, rhs = gold.value
        return lhs.expr.is_Symbol and scalars_equal(rhs, pred.value, cfg)
    if gk == "scalar" and pk == "equation":  # pred "x = 3", gold "3"
        lhs, rhs = pred.value
        return lhs.expr.is_Symbol and scalars_equal(gold.value, rhs, cfg)
    if gk == "equation" and pk == "equation":
        (gl, gr), (pl, pr) = gold.value, pred.value
        if gl.expr.is_Symbol and pl.expr == gl.expr and scalars_equal(gr, pr, cfg):
            return True
        dg, dp = _equation_diff(gold.value), _equation_diff(pred.value)
        if sympy.simplify(dg) == 0 or sympy.simplify(dp) == 0:
            return False  # an identity (both sides equal) is not an answer
        ratio = sympy.simplify(dg / dp)
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
