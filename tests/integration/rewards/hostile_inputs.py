"""Seeded generators of hostile input for the reward service (the hostile-input suite and ``bench/load.py``).

``nasty_items(rng, n, max_chars)``: well-formed requests whose *content* is hostile: whitespace runs
around answer markers (quadratic-regex bait), unclosed and deeply nested braces, towers of powers and
factorials, LaTeX command floods, control characters, NULs, bidi marks, combining marks, emoji,
repeated markers, items at the size limit, extreme ``response_tokens``. Every one must get a verdict.

``bad_bodies(rng)`` (HTTP) and ``bad_grpc_payloads()`` (raw gRPC bytes): malformed requests (broken
or deeply nested JSON, NaN / Infinity, lone surrogates, booleans and strings for integers, huge
integers, unknown fields, invalid UTF-8 on the wire); each must be refused with a 4xx /
INVALID_ARGUMENT-class code, never a 5xx.
"""

from __future__ import annotations

import json
import random

MAX_INT32 = 2**31 - 1
_SPACES = [" ", "\t", "\n", "\u00a0", "\u2003", "\r\n", "\u200b"]
_JUNK = ["\x00", "\x07", "\u202e", "\u0301" * 50, "\U0001f600", "\ufeff", "\\", "$", "{", "}", "^", "_", "#",
         "\\boxed{", "\\frac", "\\sqrt", "\\left(", "\\right)", "&", "%"]
_MARKERS = ["Answer: ", "The final answer is ", "#### ", "\\boxed{", "the answer is $", "\\[", "$$"]


def _answer(rng: random.Random) -> str:
    k = rng.randint(1, 40)
    return rng.choice([
        str(rng.randint(-10**6, 10**6)),
        "(" * k + "1" + ")" * k,
        "{" * k + "x" + "}" * rng.randint(0, k),
        "2^{" * k + "2" + "}" * k,
        f"{rng.randint(100, 99999)}!",
        f"10^{{{rng.randint(10, 10**9)}}}",
        f"({rng.randint(1000, 9999)}!)^{{{rng.randint(10, 999)}}}",
        "\\frac{" * k + "1" + "}{2}" * k,
        "\\sqrt{" * k + "2" + "}" * k,
        "x" * rng.randint(1, 3000),
        "".join(rng.choice(_JUNK) for _ in range(rng.randint(1, 200))),
        "9" * rng.randint(100, 5000),
        "1e" + str(rng.randint(300, 10**6)),
        "\\begin{pmatrix}" + "1&" * k + "1\\end{pmatrix}",
    ])


def _completion(rng: random.Random, max_chars: int) -> str:
    kind = rng.randrange(8)
    if kind == 0:  # the example: a marker, a huge whitespace run, more text
        run = rng.choice(_SPACES) * rng.randint(1000, max_chars - 20)
        return ("Answer: a" + run + "b")[:max_chars]
    if kind == 1:  # unclosed / deeply nested markers
        return ("\\boxed{" * rng.randint(1, max_chars // 8))[:max_chars]
    if kind == 2:  # marker floods
        return (rng.choice(_MARKERS) * rng.randint(1, max_chars // 10))[:max_chars]
    if kind == 3:  # random junk
        return "".join(rng.choice(_JUNK + _SPACES) for _ in range(rng.randint(0, 2000)))[:max_chars]
    if kind == 4:  # exactly at the size limit
        return ("\\boxed{1} " + "z" * max_chars)[:max_chars]
    if kind == 5:  # an innocent-looking answer that is costly to compare
        return f"so the answer is \\boxed{{{_answer(rng)}}}"[:max_chars]
    if kind == 6:  # whitespace runs between every marker and the answer
        sp = rng.choice(_SPACES)
        return (f"The final answer is{sp * rng.randint(100, 5000)}${_answer(rng)}$").rstrip()[:max_chars]
    return ""  # empty


def nasty_items(rng: random.Random, n: int, max_chars: int) -> list[dict]:
    """``n`` items with hostile completions and golds, all within the service's documented size limits."""
    out = []
    for i in range(n):
        gold = rng.choice([_answer(rng), "", " " * rng.randint(1, 500), "\\boxed{", _completion(rng, max_chars)])
        item = {"id": rng.choice([f"h{i}", "\u202e" + str(i), "\U0001f600" * rng.randint(1, 50), ""]),
                "completion": _completion(rng, max_chars), "gold": gold[:max_chars]}
        if rng.random() < 0.5:
            item["response_tokens"] = rng.choice([0, 1, MAX_INT32, rng.randint(0, 10**6)])
        out.append(item)
    return out


def bad_bodies(rng: random.Random) -> list[bytes]:
    """Malformed HTTP bodies for ``POST /v1/verify``; each must get a 4xx."""
    ok = {"completion": "\\boxed{1}", "gold": "1"}

    def body(items=None, options=None) -> bytes:
        data = {"items": items if items is not None else [ok]}
        if options is not None:
            data["options"] = options
        return json.dumps(data).encode()

    raw = [
        b"", b"{", b"null", b"[]", b'"items"', b"{not json", b"\xff\xfe\x00", b'{"items": [' + b"[" * 50_000,
        b"[" * 100_000 + b"]" * 100_000, b'{"items": [{"completion": "\\ud800", "gold": "1"}]}',
        b'{"items": [{"completion": "x", "gold": "1", "id": "\\udfff"}]}',
        b'{"items": [{"completion": "x", "gold": "1"}], "options": {"timeout_s": NaN}}',
        b'{"items": [{"completion": "x", "gold": "1"}], "options": {"timeout_s": Infinity}}',
        b'{"items": [{"completion": "x", "gold": "1"}], "options": {"timeout_s": -Infinity}}',
        b'{"items": [{"completion": "x", "gold": "1"}], "options": {"timeout_s": 1e999}}',
        b'{"items": [{"completion": "x", "gold": "1", "response_tokens": ' + b"9" * 5000 + b"}]}",
        b'{"items": [{"completion": "x", "gold": "1", "response_tokens": 1e400}]}',
    ]
    structured = [
        body(options={"overlong_buffer_tokens": False}), body(options={"max_response_tokens": True}),
        body(options={"timeout_s": True}), body(options={"timeout_s": "1"}), body(options={"timeout_s": 0}),
        body(options={"timeout_s": -1}), body(options={"timeout_s": 10**6}), body(options={"extraction": "regex"}),
        body(options={"extraction": 1}), body(options={"format_reward": "yes"}), body(options={"unknown": 1}),
        body(options=[]), body(options="marked"), body(items={}), body(items=[None]), body(items=[1]),
        body(items=[{"completion": 1, "gold": "1"}]), body(items=[{"completion": "x"}]),
        body(items=[{"completion": "x", "gold": "1", "response_tokens": -1}]),
        body(items=[{"completion": "x", "gold": "1", "response_tokens": 2**64}]),
        body(items=[{"completion": "x", "gold": "1", "response_tokens": "12"}]),
        body(items=[{"completion": "x", "gold": "1", "response_tokens": 1.5}]),
        body(items=[{"completion": "x", "gold": "1", "extra": 1}]),
        body(items=[{"completion": "x", "gold": ["1"]}]), body(items=[{"completion": "x", "gold": {"$ne": 1}}]),
        body(items=[{"completion": "x", "gold": "1", "id": 7}]),
    ]
    for _ in range(20):  # random truncations of a valid body
        b = body(items=[ok] * 3, options={"timeout_s": 1.0})
        structured.append(b[:rng.randrange(1, len(b) - 1)])
    return raw + structured


def bad_grpc_payloads() -> list[bytes]:
    """Raw bytes sent as a ``VerifyRequest``; each must be refused with INVALID_ARGUMENT."""
    item_bad_utf8 = b"\x12\x02\xff\xfe" + b"\x1a\x011"  # completion = invalid UTF-8, gold = "1"
    return [
        b"\x0a" + bytes([len(item_bad_utf8)]) + item_bad_utf8,
        b"\xff\xff\xff\xff",
        b"\x0a\x7f\x01",  # a length running past the end
        b"\x0a\x05\x12\x03\xed\xa0\x80",  # an encoded lone surrogate (invalid UTF-8)
    ]
