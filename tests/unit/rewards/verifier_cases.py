"""Labelled verifier cases: (gold, answer, expected, form). Read by the unit tests (the benchmark uses the corpus in corpus/).

A decimal matches an irrational or non-terminating gold only within ``VerifyConfig.rel_tol`` (1e-6),
so ``0.333`` for ``1/3`` and ``1.4142`` for ``\\sqrt{2}`` are wrong. ``answer`` is wrapped into a completion by ``completion_for`` with one of several answer markers
(``\\boxed{}``, "final answer is", ``####``, ``Answer:``), chosen by the case index, so extraction
is exercised on every form. ``expected`` is the mathematical truth, not what any verifier says.
"""

from __future__ import annotations

T, F = True, False

_RAW: dict[str, list[tuple[str, str, bool]]] = {
    "integer": [
        ("42", "42", T), ("42", "43", F), ("-7", "-7", T), ("-7", "7", F), ("0", "0", T), ("0", "-0", T),
        ("1112112", "1112122", F), ("1112112", "1112112", T), ("100", "100.0", T), ("100", "1e2", T),
        ("12", "012", T), ("5", "+5", T), ("2024", "2042", F), ("999999", "1000000", F), ("3", "3.0001", F),
        ("16", "4^2", T), ("16", "2^{4}", T), ("17", "4^2", F), ("8", "\\sqrt{64}", T), ("9", "\\sqrt{64}", F),
    ],
    "fraction": [
        ("\\frac{1}{2}", "\\frac{1}{2}", T), ("\\frac{1}{2}", "\\dfrac{1}{2}", T), ("\\frac{1}{2}", "\\tfrac12", T),
        ("\\frac{1}{2}", "1/2", T), ("\\frac{1}{2}", "2/4", T), ("\\frac{1}{2}", "0.5", T), ("\\frac{1}{2}", "\\frac{1}{3}", F),
        ("\\frac{3}{4}", "0.75", T), ("\\frac{3}{4}", "0.74", F), ("-\\frac{3}{4}", "\\frac{-3}{4}", T),
        ("-\\frac{3}{4}", "\\frac{3}{4}", F), ("\\frac{22}{7}", "3.142857", T), ("\\frac{22}{7}", "\\pi", F),
        ("\\frac{1}{2004!}", "\\frac{1}{2006!}", F), ("\\frac{1}{2004!}", "\\frac{1}{2004!}", T),
        ("\\frac{2005}{2006}", "\\frac{2006}{2007}", F), ("\\frac{7}{3}", "2\\frac{1}{3}", T), ("\\frac{7}{3}", "2\\frac{1}{4}", F),
        ("\\frac{1}{3}", "0.333", F), ("\\frac{1}{3}", "0.3", F), ("\\frac{2}{3}", "0.667", F), ("\\frac{2}{3}", "0.6", F),
        ("\\frac{5}{8}", "0.625", T), ("\\frac{5}{8}", "0.63", F), ("\\frac{9}{4}", "2\\frac{1}{4}", T),
        ("\\frac{1}{7}", "\\frac{2}{14}", T), ("\\frac{1}{7}", "\\frac{1}{8}", F), ("\\frac{10}{3}", "3 1/3", T),
    ],
    "decimal": [
        ("3.14", "3.14", T), ("3.14", "3.140", T), ("3.14", "3.15", F), ("0.001", "0.001", T), ("0.001", "0.01", F),
        ("2.5", "\\frac{5}{2}", T), ("2.5", "2.50", T), ("2.5", "25", F), ("-0.5", "-\\frac{1}{2}", T), ("-0.5", "0.5", F),
        ("0.1", "\\frac{1}{10}", T), ("1.05", "1.5", F), ("12.50", "\\$12.50", T), ("12.5", "\\$12.05", F),
        ("0.125", ".125", T), ("0.125", "0.1250", T), ("7.0", "7", T), ("7.0", "7.01", F),
    ],
    "mixed_percent_sci": [
        ("50\\%", "50", T), ("50", "50\\%", T), ("0.5", "50\\%", T), ("50\\%", "0.5", T), ("25\\%", "30\\%", F),
        ("12.5\\%", "12.5", T), ("12.5\\%", "1.25", F), ("1500", "1.5\\times10^3", T), ("1500", "1.5e3", T),
        ("1500", "1.5\\times 10^{4}", F), ("0.0015", "1.5\\times10^{-3}", T), ("0.0015", "1.5\\times10^{-4}", F),
        ("3\\times10^{8}", "300000000", T), ("3\\times10^{8}", "30000000", F), ("6.02\\times10^{23}", "6.02e23", T),
        ("1e-20", "2e-20", F), ("1e-20", "10^{-20}", T), ("10^{-12}", "10^{-13}", F), ("0.000001", "10^{-6}", T),
        ("0.000001", "0.0000001", F),
    ],
    "separators": [
        ("1000", "1,000", T), ("1000", "1 000", T), ("1000000", "1,000,000", T), ("1000000", "1,000,001", F),
        ("1000", "1{,}000", T), ("12345", "12,345", T), ("12345", "12,346", F), ("2500", "2,500", T),
        ("2500", "25,000", F), ("1234567", "1 234 567", T),
    ],
    "units_text": [
        ("5", "5 \\text{ cm}", T), ("5", "5\\text{ cm}^2", T), ("5", "6\\text{ cm}", F), ("12", "12 apples", T),
        ("30", "30^\\circ", T), ("30", "30^{\\circ}", T), ("30", "60^\\circ", F), ("45", "\\$45", T), ("45", "\\$54", F),
        ("18", "18 \\text{ dollars}", T), ("7", "\\text{7}", T), ("7", "\\mbox{7 days}", T), ("20", "20 minutes", T),
        ("20", "21 minutes", F), ("90", "90 degrees", T), ("100", "100 meters", T), ("3", "3 \\text{ hours}", T),
        ("3", "4 \\text{ hours}", F),
    ],
    "symbolic": [
        ("\\sqrt{2}", "\\sqrt{2}", T), ("\\sqrt{2}", "\\sqrt2", T), ("\\sqrt{2}", "2^{1/2}", T), ("\\sqrt{2}", "\\sqrt{3}", F),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", T), ("\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt{3}}{2}", F),
        ("2\\sqrt{3}", "\\sqrt{12}", T), ("2\\sqrt{3}", "\\sqrt{6}", F), ("3\\sqrt{2}", "\\sqrt{18}", T),
        ("\\pi", "\\pi", T), ("2\\pi", "2\\pi", T), ("2\\pi", "\\pi", F), ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", T),
        ("\\frac{\\pi}{2}", "\\frac{\\pi}{3}", F), ("\\pi", "3.14159", T), ("\\pi", "3.15", F),
        ("e^2", "e^{2}", T), ("e^2", "2e", F), ("\\ln 2", "\\log(2)", T), ("\\ln 2", "\\ln 3", F),
        ("\\log_2 8", "3", T), ("\\log_2 8", "4", F), ("\\sin(\\pi/6)", "\\frac{1}{2}", T), ("\\cos 0", "1", T),
        ("\\sqrt[3]{8}", "2", T), ("\\sqrt[3]{9}", "2", F), ("1+\\sqrt{5}", "\\sqrt{5}+1", T),
        ("\\frac{1+\\sqrt{5}}{2}", "\\frac{1}{2}+\\frac{\\sqrt{5}}{2}", T), ("\\frac{1+\\sqrt{5}}{2}", "\\frac{1-\\sqrt{5}}{2}", F),
        ("\\sqrt{2}", "1.41421", F), ("\\sqrt{2}", "1.4142", F), ("\\sqrt{2}", "1.42", F), ("\\frac{\\pi}{4}", "0.785", F),
        ("20!", "2432902008176640000", T), ("20!", "2432902008176640001", F), ("\\binom{10}{3}", "120", T),
        ("\\binom{10}{3}", "210", F), ("2^{10}", "1024", T), ("2^{10}", "1023", F), ("\\frac{9\\pi}{2}", "4.5\\pi", T),
        ("6\\sqrt{5}", "\\sqrt{180}", T), ("6\\sqrt{5}", "5\\sqrt{6}", F), ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}", T),
        ("4\\pi", "12.566", F), ("4\\pi", "12.57", F), ("4\\pi", "12.6", F),
    ],
    "algebraic": [
        ("x^2+2x+1", "(x+1)^2", T), ("x^2+2x+1", "(x-1)^2", F), ("2x+3", "3+2x", T), ("2x+3", "2x-3", F),
        ("\\frac{x}{2}", "0.5x", T), ("\\frac{x+1}{x-1}", "\\frac{1+x}{x-1}", T), ("\\frac{x+1}{x-1}", "\\frac{x-1}{x+1}", F),
        ("a^2-b^2", "(a-b)(a+b)", T), ("a^2-b^2", "(a-b)^2", F), ("x+z", "x+z", T), ("x+y", "x+z", F),
        ("3x^2", "3 x^{2}", T), ("3x^2", "3x^3", F), ("\\sin^2 x + \\cos^2 x", "1", T), ("\\sin^2 x - \\cos^2 x", "1", F), ("x+z", "1", F), ("2\\sin x\\cos x", "\\sin(2x)", T),
        ("\\frac{1}{x^2}", "x^{-2}", T), ("\\frac{1}{x^2}", "x^{2}", F), ("n(n+1)/2", "\\frac{n^2+n}{2}", T),
        ("n(n+1)/2", "\\frac{n^2-n}{2}", F), ("e^{x}", "\\exp(x)", T),
    ],
    "complex": [
        ("2i", "2i", T), ("2i", "-2i", F), ("1+i", "i+1", T), ("1+i", "1-i", F), ("3-4i", "3 - 4i", T),
        ("\\frac{1}{2}+\\frac{\\sqrt{3}}{2}i", "\\frac{1+i\\sqrt{3}}{2}", T), ("i", "\\sqrt{-1}", T), ("-1", "i^2", T),
        ("1", "i^2", F), ("5", "|3+4i|", T),
    ],
    "tuple": [
        ("(1,2)", "(1,2)", T), ("(1,2)", "(2,1)", F), ("(1, 2)", "(1,2)", T), ("(1,-2)", "(1, -2)", T),
        ("(\\frac{1}{2}, 3)", "(0.5, 3)", T), ("(\\frac{1}{2}, 3)", "(0.5, 4)", F), ("(1,2,3)", "(1,2,3)", T),
        ("(1,2,3)", "(1,2)", F), ("(3, \\sqrt{2})", "(3, 2^{1/2})", T), ("(0,0)", "(0,0,0)", F), ("(2,5)", "(5,2)", F),
        ("(-1, 4)", "(-1,4)", T),
    ],
    "set": [
        ("\\{1,2\\}", "\\{2,1\\}", T), ("\\{1,2\\}", "\\{1,3\\}", F), ("1, 2", "2, 1", T), ("1, 2", "1, 2, 3", F),
        ("-3, 5", "5, -3", T), ("-3, 5", "3, 5", F), ("\\{1,2,3\\}", "3,2,1", T), ("2, -2", "\\pm 2", T),
        ("1, 2", "x=1, x=2", T), ("1, 2", "x=1, x=3", F), ("\\frac{1}{2}, -1", "-1, 0.5", T), ("0, 1", "0", F),
    ],
    "interval": [
        ("(3,\\infty)", "(3, \\infty)", T), ("(3,\\infty)", "[3,\\infty)", F), ("[1,2)", "[1,2)", T), ("[1,2)", "[1,2]", F),
        ("(-\\infty, 0]", "(-\\infty,0]", T), ("(-\\infty, 0]", "(-\\infty, 0)", F), ("[0,1]", "[0, 1]", T),
        ("(-\\infty,1)\\cup(2,\\infty)", "(-\\infty,1)\\cup(2,\\infty)", T), ("(-\\infty,1)\\cup(2,\\infty)", "(-\\infty,1)\\cup[2,\\infty)", F),
        ("(-2, 5]", "(-2,5]", T), ("(-2, 5]", "[-2,5]", F), ("(-\\infty,1)\\cup(2,\\infty)", "(2,\\infty)\\cup(-\\infty,1)", T),
    ],
    "inequality": [
        ("x>3", "3<x", T), ("x>3", "x \\geq 3", F), ("(3,\\infty)", "x>3", T), ("[3,\\infty)", "x \\ge 3", T),
        ("(3,\\infty)", "x<3", F), ("x \\le 5", "(-\\infty, 5]", T), ("x \\le 5", "(-\\infty, 5)", F), ("-1<x<2", "(-1,2)", T),
        ("-1<x\\le 2", "(-1,2]", T), ("-1<x\\le 2", "[-1,2]", F), ("x<1 \\text{ or } x>2", "(-\\infty,1)\\cup(2,\\infty)", T),
        ("x \\geq 0", "x \\geq 1", F),
    ],
    "matrix": [
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", T),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", T),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", F),
        ("\\begin{pmatrix}\\frac{1}{2}\\\\-1\\end{pmatrix}", "\\begin{pmatrix}0.5\\\\-1\\end{pmatrix}", T),
        ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1&2\\end{pmatrix}", F),
        ("\\begin{pmatrix}2&0\\\\0&2\\end{pmatrix}", "\\begin{pmatrix}2&0\\\\0&3\\end{pmatrix}", F),
        ("\\begin{pmatrix}\\sqrt{4}&1\\end{pmatrix}", "\\begin{pmatrix}2&1\\end{pmatrix}", T),
        ("\\begin{bmatrix}0&1\\\\1&0\\end{bmatrix}", "\\begin{pmatrix}0&1\\\\1&0\\end{pmatrix}", T),
    ],
    "equation": [
        ("x=3", "3", T), ("3", "x=3", T), ("x=3", "x=4", F), ("3", "x+z=3", F), ("1", "x+z=1", F), ("y=2x+1", "2x+1-y=0", T),
        ("y=2x+1", "y=2x-1", F), ("y=2x+1", "y-2x=1", T), ("x=0", "x-x=0", F), ("x^2+y^2=1", "y^2+x^2=1", T),
        ("x^2+y^2=1", "x^2+y^2=2", F), ("x=5", "x = 5", T), ("2x+4y=8", "x+2y=4", T), ("2x+4y=8", "x+2y=8", F),
        ("y=3x", "3x=y", T), ("k=2", "2", T), ("k=2", "k=-2", F), ("0", "1-1=0", T), ("3", "\\frac{6}{2}=3", T),
        ("x = \\frac{1}{2}", "0.5", T), ("0", "x - x = 0", F), ("y=x^2", "y=x^3", F),
    ],
    "choice": [
        ("B", "B", T), ("B", "(B)", T), ("B", "\\text{B}", T), ("B", "\\text{(B)}", T), ("B", "C", F), ("B", "(C)", F),
        ("(A)", "A", T), ("(A)", "(D)", F), ("E", "\\textbf{(E)}", T), ("D", "\\text{(A)}", F), ("C", "c", T),
        ("A", "B", F), ("e", "2.71828", T), ("e", "E", F), ("e", "e^{1}", T),
    ],
    "tiny_huge": [
        ("10^{-10}", "0", F), ("10^{-10}", "0.0000000001", T), ("10^{-10}", "0.000000001", F), ("2^{-20}", "2^{-21}", F),
        ("\\frac{1}{1000000007}", "\\frac{1}{1000000009}", F), ("2^{100}", "1267650600228229401496703205376", T),
        ("2^{100}", "1267650600228229401496703205377", F), ("3^{50}", "3^{50}", T), ("3^{50}", "3^{51}", F),
        ("\\frac{1}{2^{64}}", "2^{-64}", T),
    ],
    "plus_minus": [
        ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}", T), ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}", F),
        ("\\pm 3", "3, -3", T), ("\\pm 3", "3", F), ("2 \\pm i", "2+i, 2-i", T), ("2 \\pm i", "2+i, -2-i", F),
    ],
    "word_problem": [
        ("18", "18", T), ("18", "16", F), ("624", "624", T), ("624", "642", F), ("70000", "70,000", T),
        ("70000", "7,000", F), ("5", "5.00", T), ("5", "5.01", F), ("0.25", "\\frac14", T), ("0.25", "\\frac{1}{5}", F),
        ("366", "366 \\text{ days}", T), ("366", "365 \\text{ days}", F), ("48", "\\$48.00", T), ("48", "\\$84", F),
    ],
}

# Completions whose extraction matters more than the comparison (no-answer and fallback cases).
EXTRACTION_CASES: list[tuple[str, str, str | None]] = [
    ("The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "\\frac{1}{2}"),
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4", "3, 4"),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", "\\{1, 2\\}"),
    ("nested \\boxed{\\frac{\\sqrt{2}}{2}} ok", "x", "\\frac{\\sqrt{2}}{2}"),
    ("\\fbox{7}", "7", "7"),
    ("so $\\boxed 5$", "5", "5"),
    ("Therefore, the final answer is $42$. I hope it is correct.", "42", "42"),
    ("The final answer is 3.5.", "3.5", "3.5"),
    ("She has 3 left.\n#### 3", "3", "3"),
    ("#### 1,000", "1000", "1,000"),
    ("Answer: \\(x = 2\\)", "2", "x = 2"),
    ("Answer: $\\frac{3}{4}$", "0.75", "\\frac{3}{4}"),
    ("So she pays 3 * 6 = 18 dollars. The answer is 18.", "18", "18"),
    ("I think it is 12 but not sure", "12", None),
    ("", "1", None),
]


def _wrap(answer: str, k: int) -> str:
    templates = (
        "We compute step by step. Thus the result is $\\boxed{{{a}}}$.",
        "Putting it together, the final answer is ${a}$.",
        "Some reasoning here.\n#### {a}",
        "Work shown above.\nAnswer: {a}",
    )
    template = templates[k % len(templates)]
    if "$" in answer or "\n" in answer or ("$" in template and "\\begin" in answer):
        template = templates[0]
    return template.format(a=answer)


def completion_for(answer: str, k: int) -> str:
    """A realistic completion that carries ``answer`` with marker number ``k``."""
    return _wrap(answer, k)


CASES: list[tuple[str, str, bool, str]] = [
    (gold, answer, expected, form) for form, rows in _RAW.items() for gold, answer, expected in rows
]


def labelled() -> list[dict]:
    """Every case as ``{gold, completion, answer, expected, form}``, completions built deterministically."""
    return [{"gold": g, "answer": a, "completion": completion_for(a, k), "expected": e, "form": f}
            for k, (g, a, e, f) in enumerate(CASES)]
