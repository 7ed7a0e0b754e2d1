"""A small, safe LaTeX / plain-math expression parser that builds sympy objects directly.

No ``eval``, no ``sympify`` of strings: a tokenizer and a recursive-descent parser construct sympy
expressions node by node, checking the safety caps as they go (nesting depth, integer exponent size,
power-tower height, factorial size). Supports numbers (decimals kept exact, with a flag), variables
with implicit multiplication, ``+ - * / ^ **``, ``\\frac``, ``\\sqrt[n]{}``, ``\\pi``, ``e``, ``i``,
``\\infty``, trig / log functions, ``!``, ``|x|``, ``\\cdot``, ``\\times``, ``\\div``.
Runs inside the verifier's worker processes (it imports sympy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy

from rewards.config import VerifyConfig


class ParseError(ValueError):
    """The text is not an expression this parser reads."""


class LimitExceeded(ValueError):
    """The expression breaks a safety cap (exponent, tower height, factorial, depth)."""


_TOKEN = re.compile(r"""
    (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+(?![a-zA-Z]))?|\.\d+)
  | (?P<cmd>\\[a-zA-Z]+|\\[{}|])
  | (?P<word>[a-zA-Z]+)
  | (?P<op>\*\*|[-+*/^()\[\]{}!,|=<>'_])
  | (?P<uni>[π√×÷−·∞≤≥])
  | (?P<ws>\s+)
""", re.VERBOSE)

_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec,
    "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
    "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "ln": sympy.log, "exp": sympy.exp,
    "log": None,  # base 10 in plain text is ambiguous; sympy.log is natural; \log_b handled below
    "sqrt": sympy.sqrt, "abs": sympy.Abs,
}
_CONSTS = {"pi": sympy.pi, "infty": sympy.oo, "infinity": sympy.oo, "inf": sympy.oo}
_UNICODE = {"π": ("cmd", "\\pi"), "√": ("cmd", "\\sqrt"), "×": ("op", "*"), "÷": ("op", "/"),
            "−": ("op", "-"), "·": ("op", "*"), "∞": ("cmd", "\\infty")}
_MUL_CMDS = {"\\cdot", "\\times", "\\ast"}


@dataclass
class Parsed:
    expr: sympy.Expr
    has_decimal: bool = False
    decimal_places: int = 0
    symbols: set[str] = field(default_factory=set)


def tokenize(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"unexpected character {text[pos]!r} at {pos}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group()
        if kind == "ws":
            continue
        if kind == "uni":
            kind, value = _UNICODE.get(value, ("op", value))
        if kind == "word":  # split a run of letters into known names and single-letter symbols
            out.extend(_split_word(value))
            continue
        out.append((kind, value))
    return out


def _split_word(word: str) -> list[tuple[str, str]]:
    names = sorted(list(_FUNCS) + list(_CONSTS), key=len, reverse=True)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(word):
        for name in names:
            if word.startswith(name, i) and len(name) > 1:
                out.append(("func" if name in _FUNCS else "const", name))
                i += len(name)
                break
        else:
            out.append(("sym", word[i]))
            i += 1
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], cfg: VerifyConfig):
        self.toks = tokens
        self.i = 0
        self.cfg = cfg
        self.depth = 0
        self.has_decimal = False
        self.decimal_places = 0

    # -- token helpers
    def peek(self, k: int = 0) -> tuple[str, str] | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end of expression")
        self.i += 1
        return tok

    def accept(self, value: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[1] == value:
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            raise ParseError(f"expected {value!r}, got {self.peek()[1] if self.peek() else 'end'!r}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.cfg.max_depth:
            raise LimitExceeded(f"nesting deeper than max_depth={self.cfg.max_depth}")

    # -- grammar
    def parse(self) -> sympy.Expr:
        e = self.expr()
        if self.peek() is not None:
            raise ParseError(f"unexpected {self.peek()[1]!r}")
        return e

    def expr(self) -> sympy.Expr:
        self.enter()
        e = self.term()
        while (tok := self.peek()) is not None and tok[1] in ("+", "-", "\\pm"):
            self.take()
            if tok[1] == "\\pm":
                raise ParseError("\\pm is not a single value")
            rhs = self.term()
            e = e + rhs if tok[1] == "+" else e - rhs
        self.depth -= 1
        return e

    def term(self) -> sympy.Expr:
        e = self.unary()
        while (tok := self.peek()) is not None:
            if tok[1] in ("*", "/") or tok[1] in _MUL_CMDS or tok[1] == "\\div":
                self.take()
                rhs = self.unary()
                e = e / rhs if tok[1] in ("/", "\\div") else e * rhs
            elif self._starts_atom(tok):  # implicit multiplication: 2x, 2\pi, x(y+1)
                e = e * self.power()
            else:
                break
        return e

    def unary(self) -> sympy.Expr:
        if self.accept("-"):
            return -self.unary()
        if self.accept("+"):
            return self.unary()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix()
        if self.peek() is not None and self.peek()[1] in ("^", "**"):
            self.take()
            self.enter()
            tower = getattr(self, "_tower", 1) + 1
            if tower > self.cfg.max_power_tower + 1:
                raise LimitExceeded(f"power tower higher than max_power_tower={self.cfg.max_power_tower}")
            saved, self._tower = getattr(self, "_tower", 1), tower
            exp = self.unary() if self.peek() and self.peek()[1] in ("-", "+") else self.postfix()
            self._tower = saved
            self.depth -= 1
            return self._pow(base, exp)
        return base

    def _pow(self, base: sympy.Expr, exp: sympy.Expr) -> sympy.Expr:
        if exp.is_number and base.is_number:
            try:
                big = bool(abs(exp) > self.cfg.max_exponent)
            except TypeError:  # undecidable comparison (e.g. symbolic complex)
                big = True
            if big and base not in (0, 1, -1):
                raise LimitExceeded(f"exponent exceeds max_exponent={self.cfg.max_exponent}")
        elif exp.is_Integer and abs(exp) > self.cfg.max_exponent:
            raise LimitExceeded(f"exponent {exp} exceeds max_exponent={self.cfg.max_exponent}")
        if base.is_Rational and exp.is_Integer:  # exact power: bound the size of the result
            bits = max(int(base.p).bit_length(), int(base.q).bit_length()) * abs(int(exp))
            if bits > self.cfg.max_integer_bits:
                raise LimitExceeded(f"power would have ~{bits} bits (max_integer_bits={self.cfg.max_integer_bits})")
        return sympy.Pow(base, exp)

    def postfix(self) -> sympy.Expr:
        e = self.atom()
        while self.peek() is not None and self.peek()[1] in ("!", "'"):
            if self.take()[1] == "'":
                raise ParseError("derivative marks are not values")
            if e.is_number and not (e.is_Integer and 0 <= e <= 10 * self.cfg.max_exponent):
                raise LimitExceeded(f"factorial argument is not an integer in [0, {10 * self.cfg.max_exponent}]")
            e = sympy.factorial(e)  # n! of a variable stays symbolic
        return e

    def _starts_atom(self, tok: tuple[str, str]) -> bool:
        kind, value = tok
        if kind in ("num", "sym", "func", "const"):
            return True
        if kind == "cmd":
            return value not in _MUL_CMDS and value not in ("\\div", "\\pm", "\\}", "\\|")
        return value in ("(", "{", "[")

    def group(self) -> sympy.Expr:
        """A ``{...}`` argument, or a single token (``\\frac12``)."""
        if self.accept("{"):
            e = self.expr()
            self.expect("}")
            return e
        kind, value = self.take()
        if kind == "num" and "." not in value and len(value) > 1:  # \frac12 -> 1, then 2
            self.toks.insert(self.i, ("num", value[1:]))
            return sympy.Integer(value[0])
        self.i -= 1
        return self.atom()

    def atom(self) -> sympy.Expr:
        kind, value = self.take()
        if kind == "num":
            return self._number(value)
        if kind == "sym":
            if self.accept("_"):  # subscripts name a variable: x_1
                sub = self.take()[1] if not self.accept("{") else self._until("}")
                return sympy.Symbol(f"{value}_{sub}")
            if value == "e":
                return sympy.E
            if value == "i":
                return sympy.I
            return sympy.Symbol(value)
        if kind == "const":
            return _CONSTS[value]
        if kind == "func":
            return self._function(value)
        if value in ("(", "[", "{"):
            close = {"(": ")", "[": "]", "{": "}"}[value]
            e = self.expr()
            self.expect(close)
            return e
        if value in ("|", "\\|"):
            e = self.expr()
            self.expect(value)
            return sympy.Abs(e)
        if kind == "cmd":
            name = value[1:]
            if name == "frac" or name == "cfrac":
                num = self.group()
                den = self.group()
                return num / den
            if name == "binom":
                n, k = self.group(), self.group()
                if (n.is_number or k.is_number) and not (
                        (n.is_Integer or n.free_symbols) and k.is_Integer and abs(n if n.is_number else k) <= 10 * self.cfg.max_exponent):
                    raise LimitExceeded("binomial arguments too large or not integers")
                return sympy.binomial(n, k)
            if name == "sqrt":
                index = None
                if self.accept("["):
                    index = self.expr()
                    self.expect("]")
                arg = self.group()
                return sympy.sqrt(arg) if index is None else sympy.root(arg, index)
            if name in _CONSTS:
                return _CONSTS[name]
            if name in _FUNCS:
                return self._function(name)
            if name in ("mathrm", "text", "mathbf", "operatorname"):
                return self.group()
            raise ParseError(f"unknown command {value}")
        raise ParseError(f"unexpected {value!r}")

    def _until(self, close: str) -> str:
        parts = []
        while (tok := self.take())[1] != close:
            parts.append(tok[1])
        return "".join(parts)

    def _function(self, name: str) -> sympy.Expr:
        base = None
        if name == "log" and self.accept("_"):
            base = self.group()
        power = None
        if self.accept("^"):  # \sin^2 x
            power = self.group()
        if self.peek() is not None and self.peek()[1] in ("(", "{"):
            arg = self.atom()
        else:  # \\sin 2x is sin(2x): numbers and letters that follow belong to the argument
            arg = self.power()
            while (tok := self.peek()) is not None and tok[0] in ("sym", "const", "num") and tok[1] != "e":
                arg = arg * self.power()
        if name == "log":
            value = sympy.log(arg, base) if base is not None else sympy.log(arg)
        else:
            value = _FUNCS[name](arg)
        return self._pow(value, power) if power is not None else value

    def _number(self, text: str) -> sympy.Expr:
        if "e" in text or "E" in text:
            mant, _, exp = text.replace("E", "e").partition("e")
            if abs(int(exp)) > self.cfg.max_exponent:
                raise LimitExceeded(f"exponent {exp} exceeds max_exponent={self.cfg.max_exponent}")
            return sympy.Rational(mant) * sympy.Integer(10) ** int(exp)
        if "." in text:
            digits = len(text.split(".")[1])
            self.has_decimal = True
            self.decimal_places = max(self.decimal_places, digits)
            return sympy.Rational(text) if text[-1] != "." else sympy.Integer(text[:-1])
        return sympy.Integer(text)


def parse_expression(text: str, cfg: VerifyConfig) -> Parsed:
    """Parse one scalar expression (already normalised) into sympy, enforcing the caps."""
    if len(text) > cfg.max_answer_chars:
        raise LimitExceeded(f"answer longer than max_answer_chars={cfg.max_answer_chars}")
    depth = 0
    for c in text:
        depth += c in "({["
        depth -= c in ")}]"
        if depth > cfg.max_depth:
            raise LimitExceeded(f"nesting deeper than max_depth={cfg.max_depth}")
    tokens = tokenize(text)
    if not tokens:
        raise ParseError("empty expression")
    p = _Parser(tokens, cfg)
    expr = p.parse()
    if not isinstance(expr, sympy.Expr):
        raise ParseError(f"not a scalar expression: {type(expr).__name__}")
    return Parsed(expr, p.has_decimal, p.decimal_places, {str(s) for s in expr.free_symbols})
