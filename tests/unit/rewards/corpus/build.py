"""Writes the labelled verifier corpus (``*.jsonl`` next to this file): ``python build.py``.

The cases imitate the answer formats of public math data sets and open models: GSM8K (``#### N``
golds and worked solutions), MATH (``\\boxed{}`` solutions as golds), AIME integers, olympiad
expressions, multiple choice, chatty open-model outputs, the forms listed for the verifier, and
crafted wrong answers that must never be judged correct. ``expected`` is the mathematical truth
of "the completion's final answer equals the gold", not what any verifier says; ``reason`` says
why. ``answer`` is the bare final answer when the completion has one (``extraction="answer"``
is benchmarked on it), else null. Labels were written before the lenient verifier existed.

Record: ``{"id", "dataset", "completion", "gold", "answer", "expected", "reason"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
T, F = True, False


def rec(dataset, completion, gold, answer, expected, reason):
    return {"dataset": dataset, "completion": completion, "gold": gold, "answer": answer,
            "expected": expected, "reason": reason}


# ------------------------------------------------------------------ GSM8K
# (gold number, worked reasoning, a plausible wrong result, a unit word)
GSM = [
    ("72", "Natalia sold 48/2 = 24 clips in May. Altogether she sold 48 + 24 = 72 clips.", "70", "clips"),
    ("10", "Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10.", "12", "dollars"),
    ("5", "Betty has 100/2 = $50. Her grandparents give 15*2 = $30. She still needs 100-50-30-15 = $5.", "15", "dollars"),
    ("42", "Julie read 12 + 24 = 36 pages. 120 - 36 = 84 remain, and half of that is 84/2 = 42.", "84", "pages"),
    ("624", "He writes 3*2 = 6 pages to each friend twice a week: 12 pages a week, so 12*52 = 624 pages.", "642", "pages"),
    ("35", "Purple: 10*1.8 = 18. Green: 0.25*(10+18) = 7. Total 10 + 18 + 7 = 35 flowers.", "28", "flowers"),
    ("48", "Two large pizzas have 2*16 = 32 slices and two small ones 2*8 = 16, so 32 + 16 = 48 slices.", "32", "slices"),
    ("16", "The box weighed 2 pounds, then 2*3 = 6, then 6 + 2 = 8, then 8*2 = 16 pounds.", "8", "pounds"),
    ("41", "She spent 30+46+38+11+18 = 143 on clothes, so the shoes cost 200 - 143 - 16 = 41 dollars.", "57", "dollars"),
    ("990", "Overtime pay is 18*1.5 = 27 an hour. She earns 8*18 = 144 plus 2*27 = 54: 198 a day, 198*5 = 990.", "900", "dollars"),
    ("121", "New episodes: 1+4+2 = ... the total number of downloads is 60 + 60*3 = 240, minus 30% ... = 121.", "112", "downloads"),
    ("18", "Janet sells 16 - 3 - 4 = 9 eggs a day at $2 each, so she makes 9 * 2 = $18 every day.", "16", "dollars"),
    ("3", "A robe needs 2 bolts of blue fiber and 2/2 = 1 bolt of white fiber, so 2 + 1 = 3 bolts.", "4", "bolts"),
    ("70000", "The house cost 80,000 + 50,000 = 130,000; its value became 80,000*2.5 = 200,000. Profit: 200,000 - 130,000 = 70,000.", "7000", "dollars"),
    ("540", "He runs 3 sprints 3 times a week: 9 sprints of 60 meters, so 9 * 60 = 540 meters a week.", "180", "meters"),
    ("20", "The flock eats 3*20 = 60 cups a day; 15 + 25 = 40 are given, so the last meal is 60 - 40 = 20 cups.", "40", "cups"),
    ("64", "Every second glass costs 5*0.6 = $3. 8 glasses at $5 and 8 at $3: 40 + 24 = $64.", "80", "dollars"),
    ("260", "Charleston has 4*20 = 80 sheep and Toulouse 2*80 = 160; with Seattle's 20: 20 + 80 + 160 = 260.", "240", "sheep"),
    ("160", "40% of 200 GB is 80 GB, downloaded in 80/2 = 40 min; restart adds 20 min; 200/2 = 100 min: 160 minutes.", "100", "minutes"),
    ("45", "In the first 3 hours he drives 3*60 = 180 miles; the way back ... he is 45 miles from home.", "75", "miles"),
    ("460", "She worked 45 hours: 40*10 = 400 regular plus 5*12 = 60 overtime, so 460 dollars.", "450", "dollars"),
    ("366", "Year one 60 + 3*60 = 240 downloads... the three months total 60 + 180 + 126 = 366.", "365", "downloads"),
    ("694", "Doughnuts 3*68 = 204, mini cupcakes 2*80 = 160, mini cheesecakes 6*55 = 330: 204 + 160 + 330 = 694.", "649", "dollars"),
    ("13", "Each year he earns 7*1.5 = 10.5 - 3 = 7.5 net; 90/7.5 = 12, so in year 13 he makes money.", "12", "years"),
    ("18", "Meghan had 20 - 2 = 18 dollars left after she bought lunch.", "20", "dollars"),
    ("1200", "Tuition is 12 units * 50 = 600 per semester; for 2 semesters it is 600*2 = 1,200.", "600", "dollars"),
    ("2500", "Five boxes of 500 sheets each make 5*500 = 2,500 sheets.", "25000", "sheets"),
    ("0.5", "Half of the 1 liter of juice, 1/2 = 0.5 liters, is left.", "0.25", "liters"),
    ("12.5", "The average is (10 + 15)/2 = 12.5 points.", "12", "points"),
    ("104", "8 rows of 13 chairs: 8*13 = 104 chairs.", "96", "chairs"),
]

# How a model writes a final GSM8K answer (marked forms first, then chatty ones).
GSM_MARKED = [
    ("gsm8k-hash", "{r}\n#### {a}"),
    ("answer-is", "{r} The answer is {a}."),
    ("boxed", "{r}\nTherefore, the answer is $\\boxed{{{a}}}$."),
    ("final-answer", "{r}\nThe final answer is {a}. I hope it is correct."),
    ("answer-colon", "{r}\n\nAnswer: {a}"),
]
GSM_CHATTY = [
    ("bold-answer", "{r}\n\n**Answer:** {a} {u}"),
    ("dollar-math", "{r} So the final result is ${a}$."),
    ("sentence-end", "{r} So in total the answer comes to {a} {u}."),
    ("display-math", "{r}\n\nSo we get\n$$\n{a}\n$$"),
]


def gsm8k() -> list[dict]:
    out = []
    for k, (gold, reasoning, wrong, unit) in enumerate(GSM):
        gold_field = f"{reasoning}\n#### {gold}"  # GSM8K's own `answer` field, as a user passes it
        name, tpl = GSM_MARKED[k % len(GSM_MARKED)]
        out.append(rec("gsm8k", tpl.format(r=reasoning, a=gold), gold, gold, T, f"{name}: the right number"))
        name, tpl = GSM_MARKED[(k + 2) % len(GSM_MARKED)]
        out.append(rec("gsm8k", tpl.format(r=reasoning, a=wrong), gold, wrong, F, f"{name}: a different number"))
        name, tpl = GSM_CHATTY[k % len(GSM_CHATTY)]
        out.append(rec("gsm8k", tpl.format(r=reasoning, a=gold, u=unit), gold_field, gold, T,
                       f"{name}; gold is the whole GSM8K answer field (its #### number)"))
        name, tpl = GSM_CHATTY[(k + 1) % len(GSM_CHATTY)]
        out.append(rec("gsm8k", tpl.format(r=reasoning, a=wrong, u=unit), gold_field, wrong, F,
                       f"{name}: a different number, gold as the GSM8K answer field"))
    more = [
        ("She pays $1,200 in total.\n#### 1,200", "1200", "1,200", T, "thousands separator in the prediction"),
        ("#### 1200", "1,200", "1200", T, "thousands separator in the gold"),
        ("The total is \\$70,000.\n#### 70,000", "70000", "70,000", T, "separator after a currency sign"),
        ("#### $18.00", "18", "$18.00", T, "currency and trailing zeros"),
        ("#### 18.50", "18.5", "18.50", T, "trailing zero decimal"),
        ("#### 18.05", "18.5", "18.05", F, "a different decimal"),
        ("#### 7 000 000", "7000000", "7 000 000", T, "space thousands separator"),
        ("#### 7,000,001", "7000000", "7,000,001", F, "off by one with separators"),
        ("The answer is 5 hours.", "5", "5 hours", T, "unit word after the number"),
        ("The answer is 50%.", "50", "50%", T, "percent sign, gold without it"),
        ("The answer is 0.75", "3/4", "0.75", T, "decimal for a fraction gold"),
        ("#### -3", "3", "-3", F, "sign flipped"),
        ("#### 3", "-3", "3", F, "sign flipped"),
        ("The answer is 12 and 5 remain.", "12", "12", T, "answer cue followed by more text"),
        ("First I got 10, but the correct total is 12.\n#### 12", "12", "12", T, "earlier wrong number, marked right one"),
        ("Answer: 7 apples", "7", "7 apples", T, "answer line with a unit word"),
        ("Answer: 7 apples", "8", "7 apples", F, "answer line, wrong number"),
        ("He needs 3 + 4 = 7 more boxes.", "7", "7", T, "unmarked: the last expression's value"),
        ("I'm not sure how to solve this problem.", "7", None, F, "no answer at all"),
        ("", "7", None, F, "empty completion"),
        ("The answer is \\$1,234.50.", "1234.5", "\\$1,234.50", T, "LaTeX dollar, separator, trailing zero"),
        ("#### 1,234.56", "1234.56", "1,234.56", T, "separator with decimals"),
        ("#### 1.234", "1234", "1.234", F, "European grouping dot is not read as a separator"),
        ("Total = 45 + 30 = 75 minutes\n#### 75", "75", "75", T, "GSM8K marker after arithmetic"),
        ("The answer is: 36", "36", "36", T, "answer is with a colon"),
        ("So she has 36 stickers left.\n\n**Final Answer: 36**", "36", "36", T, "bold final answer"),
        ("So she has 36 stickers left.\n\n**Final Answer: 38**", "36", "38", F, "bold final answer, wrong"),
        ("The final answer is $\\boxed{36}$", "#### 36", "36", T, "gold written with the #### marker only"),
        ("The final answer is 1000.", "1000", "1000", T, "plain integer"),
        ("The final answer is 100.", "1000", "100", F, "missing a zero"),
    ]
    out += [rec("gsm8k", c, g, a, e, r) for c, g, a, e, r in more]
    return out


# ------------------------------------------------------------------ MATH (Hendrycks style)
# (gold answer as it appears in \boxed{} of the reference solution, prediction, expected, reason)
MATH = [
    ("\\frac{3}{5}", "\\frac{3}{5}", T, "same fraction"), ("\\frac{3}{5}", "\\dfrac{3}{5}", T, "dfrac"),
    ("\\frac{3}{5}", "0.6", T, "exact decimal"), ("\\frac{3}{5}", "\\frac{5}{3}", F, "inverted"),
    ("\\frac{3}{5}", "\\frac{6}{10}", T, "unreduced"), ("\\frac{3}{5}", "3/5", T, "slash"),
    ("-\\frac{1}{2}", "-0.5", T, "negative decimal"), ("-\\frac{1}{2}", "\\frac{1}{2}", F, "sign"),
    ("\\frac{1}{3}", "0.\\overline{3}", T, "repeating decimal notation"),
    ("\\frac{1}{3}", "0.33", F, "two decimals is not 1/3 (relative precision 1e-6)"),
    ("\\frac{1}{3}", "0.333333333", T, "nine decimals: within relative precision 1e-6"),
    ("\\sqrt{2}", "\\sqrt2", T, "sqrt without braces"), ("2\\sqrt{2}", "\\sqrt{8}", T, "simplified radical"),
    ("2\\sqrt{2}", "2\\sqrt{3}", F, "different radicand"), ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", T, "coefficient moved"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", T, "rationalised"), ("\\frac{\\sqrt{3}}{3}", "\\sqrt{3}", F, "missing denominator"),
    ("5\\sqrt{5}", "\\sqrt{125}", T, "radical"), ("3+2\\sqrt{2}", "(1+\\sqrt{2})^2", T, "expanded square"),
    ("3+2\\sqrt{2}", "3-2\\sqrt{2}", F, "conjugate"), ("\\pi", "\\pi", T, "pi"), ("16\\pi", "16 \\pi", T, "spacing"),
    ("16\\pi", "4\\pi", F, "wrong coefficient"), ("\\frac{\\pi}{6}", "\\frac16\\pi", T, "frac shorthand"),
    ("\\frac{\\pi}{6}", "30^\\circ", F, "degrees are not radians"), ("30^\\circ", "30", T, "degree sign dropped"),
    ("90^\\circ", "90^{\\circ}", T, "braced circ"), ("\\frac{9}{2}", "4.5", T, "decimal"), ("\\frac{9}{2}", "4\\frac{1}{2}", T, "mixed number"),
    ("\\frac{9}{2}", "4.6", F, "wrong decimal"), ("\\dfrac{7}{2}", "\\tfrac{7}{2}", T, "tfrac"),
    ("(2,-1)", "(2, -1)", T, "point"), ("(2,-1)", "(-1,2)", F, "swapped coordinates"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", T, "polar point with left/right"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{4})", F, "wrong angle"),
    ("[-2,7]", "[-2, 7]", T, "closed interval"), ("[-2,7]", "(-2,7)", F, "open vs closed"),
    ("(-\\infty,-3)\\cup(3,\\infty)", "(-\\infty, -3) \\cup (3, \\infty)", T, "union of intervals"),
    ("(-\\infty,-3)\\cup(3,\\infty)", "(-\\infty, -3] \\cup [3, \\infty)", F, "endpoints included"),
    ("(-\\infty,-3)\\cup(3,\\infty)", "(-3,3)", F, "complement"),
    ("\\begin{pmatrix} 2 \\\\ -1 \\end{pmatrix}", "\\begin{pmatrix}2\\\\-1\\end{pmatrix}", T, "column vector"),
    ("\\begin{pmatrix} 2 \\\\ -1 \\end{pmatrix}", "\\begin{pmatrix}-1\\\\2\\end{pmatrix}", F, "swapped entries"),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{bmatrix}1&0\\\\0&1\\end{bmatrix}", T, "bmatrix"),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix}1&1\\\\0&1\\end{pmatrix}", F, "one entry"),
    ("\\begin{pmatrix} \\frac{1}{2} & 0 \\\\ 0 & 2 \\end{pmatrix}", "\\begin{pmatrix}0.5&0\\\\0&2\\end{pmatrix}", T, "decimal entry"),
    ("x^2+7x+10", "(x+2)(x+5)", T, "factored"), ("x^2+7x+10", "(x+2)(x-5)", F, "wrong factor"),
    ("2x^2-3x", "x(2x-3)", T, "factored"), ("\\frac{x+1}{x}", "1+\\frac1x", T, "split fraction"),
    ("3x-7", "-7+3x", T, "reordered"), ("3x-7", "3x+7", F, "sign"), ("a^2b", "ba^2", T, "commuted"),
    ("y=-2x+3", "y = 3-2x", T, "line"), ("y=-2x+3", "y=2x+3", F, "slope sign"),
    ("y=-2x+3", "-2x+3", T, "the right side of y = ..."),
    ("\\text{(C)}", "C", T, "choice letter"), ("\\text{(C)}", "(D)", F, "other letter"),
    ("\\text{Devon}", "Devon", T, "name"), ("\\text{Devon}", "\\text{devon}", T, "case-insensitive text"),
    ("\\text{Devon}", "Evan", F, "other name"), ("\\text{odd}", "\\text{odd}", T, "text answer"),
    ("\\text{odd}", "\\text{even}", F, "text answer"), ("\\text{neither}", "neither", T, "text answer unwrapped"),
    ("1,-2", "-2, 1", T, "unordered roots"), ("1,-2", "1", F, "one of two roots"), ("1,-2", "1,2", F, "sign of a root"),
    ("-1, 2, 3", "3, 2, -1", T, "three roots reordered"), ("-1, 2, 3", "2, 3", F, "missing root"),
    ("\\{1,2,3\\}", "\\{3,1,2\\}", T, "set"), ("\\{1,2,3\\}", "\\{1,2\\}", F, "subset"),
    ("8", "8", T, "integer"), ("8", "2^3", T, "power"), ("8", "9", F, "integer"), ("0", "0", T, "zero"),
    ("0", "-0", T, "negative zero"), ("1", "\\frac{2}{2}", T, "unreduced"), ("24", "4!", T, "factorial"),
    ("120", "\\binom{10}{3}", T, "binomial"), ("252", "\\binom{10}{5}", T, "binomial"), ("250", "\\binom{10}{5}", F, "binomial"),
    ("\\frac{1}{4}", "25\\%", T, "percent of a fraction"), ("\\frac{1}{4}", "0.4", F, "decimal"),
    ("2+3i", "3i+2", T, "complex"), ("2+3i", "2-3i", F, "conjugate"), ("-i", "\\frac{1}{i}", T, "1/i"),
    ("\\infty", "\\infty", T, "infinity"), ("\\infty", "-\\infty", F, "sign"),
    ("\\emptyset", "\\varnothing", T, "empty set notation"), ("\\emptyset", "\\{\\}", T, "empty braces"),
    ("\\log_2 5", "\\frac{\\ln 5}{\\ln 2}", T, "change of base"), ("e^3", "e^{3}", T, "braced power"),
    ("\\sin x", "\\sin(x)", T, "parenthesised argument"), ("\\cos 2x", "\\cos^2 x - \\sin^2 x", T, "identity"),
    ("\\tan x", "\\frac{\\sin x}{\\cos x}", T, "identity"), ("\\tan x", "\\frac{\\cos x}{\\sin x}", F, "cotangent"),
]

MATH_TEMPLATES = [
    ("boxed-sentence", "We simplify step by step.\n\nTherefore the answer is $\\boxed{{{a}}}$."),
    ("boxed-display", "Combining the cases gives\n\\[\n\\boxed{{{a}}}\n\\]"),
    ("final-answer", "Thus we are done.\nFinal Answer: The final answer is ${a}$. I hope it is correct."),
    ("boxed-inline", "So the result is \\boxed{{{a}}}."),
]


def math_set() -> list[dict]:
    out = []
    for k, (gold, pred, expected, reason) in enumerate(MATH):
        name, tpl = MATH_TEMPLATES[k % len(MATH_TEMPLATES)]
        if name == "final-answer" and ("\\begin" in pred or "$" in pred):
            name, tpl = MATH_TEMPLATES[0]
        g = gold
        if k % 3 == 1:  # the MATH `solution` field as gold: its last \boxed{} is the answer
            g = f"We compute carefully. First $x = 2$, and so the answer is $\\boxed{{{gold}}}$."
        elif k % 3 == 2:
            g = f"${gold}$"
        out.append(rec("math", tpl.format(a=pred), g, pred, expected, f"{name}: {reason}"))
    return out


# ------------------------------------------------------------------ AIME
def aime() -> list[dict]:
    out = []
    rows = [("73", "073"), ("204", "204"), ("25", "025"), ("809", "809"), ("33", "033"), ("116", "116"),
            ("104", "104"), ("601", "601"), ("5", "005"), ("468", "468"), ("907", "907"), ("60", "060")]
    wrong = ["74", "240", "52", "890", "3", "161", "140", "106", "50", "486", "97", "6"]
    for k, ((gold, written), bad) in enumerate(zip(rows, wrong)):
        out.append(rec("aime", f"Let me count the cases carefully... so the answer is $\\boxed{{{written}}}$.", gold, written, T,
                       "AIME integer, zero-padded to three digits"))
        out.append(rec("aime", f"Adding up: the remainder when divided by 1000 is $\\boxed{{{bad}}}$.", gold, bad, F,
                       "a different integer"))
        out.append(rec("aime", f"<think>\nSo m+n = {gold}.\n</think>\n\nThe answer is {written}.", gold, written, T,
                       "answer cue after a reasoning block"))
        out.append(rec("aime", f"Hence $m+n = {bad}$.", gold, bad, F, "last math expression, wrong value"))
    out += [
        rec("aime", "Therefore $m+n=\\boxed{073}$.", "073", "073", T, "zero-padded gold"),
        rec("aime", "Therefore $m + n = 73$.", "73", "m + n = 73", F,
            "an equation is not one of its sides: m + n = 73 states a relation, the value asked is 73"),
        rec("aime", "The number of paths is $\\boxed{1000}$, so mod 1000 it is $\\boxed{0}$.", "0", None, F,
            "two different boxed candidates in the final answer"),
        rec("aime", "The answer is $\\boxed{0}$.", "0", "0", T, "zero"),
        rec("aime", "The answer is $\\boxed{\\text{073}}$.", "73", "\\text{073}", T, "text-wrapped integer"),
        rec("aime", "The answer is $\\boxed{73.0}$.", "73", "73.0", T, "trailing .0"),
        rec("aime", "The answer is $\\boxed{7.3}$.", "73", "7.3", F, "misplaced decimal point"),
        rec("aime", "So the final answer is 999", "999", "999", T, "no punctuation"),
    ]
    return out


# ------------------------------------------------------------------ olympiad-style expressions
OLY = [
    ("f(x)=x^2", "f(x) = x^2", T, "function equation"), ("f(x)=x^2", "x^2", T, "the function's expression"),
    ("f(x)=x^2", "f(x)=x^3", F, "different function"), ("f(x)=2x+1", "f(x)=1+2x", T, "reordered"),
    ("n=2", "2", T, "assignment"), ("n=2", "n=3", F, "assignment"), ("k=\\frac{1}{3}", "\\frac13", T, "assignment, frac shorthand"),
    ("x=\\frac{1}{3}", "1/3", T, "assignment vs value"), ("\\frac{1}{3}", "x = 1/3", T, "value vs assignment"),
    ("11a+c", "7 = 11a+c", F, "an equation is not its side"), ("11a+c", "11a+c", T, "same expression"),
    ("0", "0=0", F, "an identity is not a value"), ("5", "5=5", F, "an identity is not a value"),
    ("3", "\\frac{6}{2} = 3", T, "computation chain ending in the value"),
    ("\\frac{n(n+1)}{2}", "\\frac{n^2+n}{2}", T, "expanded"), ("\\frac{n(n+1)}{2}", "\\frac{n(n-1)}{2}", F, "off by one"),
    ("2^{n}-1", "2^n - 1", T, "spacing"), ("2^{n}-1", "2^{n-1}", F, "different"), ("n!", "n!", T, "factorial"),
    ("\\binom{n}{2}", "\\frac{n(n-1)}{2}", T, "binomial expanded"), ("(n-1)!", "\\frac{n!}{n}", T, "factorial identity"),
    ("\\frac{a+b}{2}", "\\frac{b+a}{2}", T, "commuted"), ("\\sqrt{ab}", "\\sqrt{ba}", T, "commuted"),
    ("\\frac{1}{2}\\ln 2", "\\ln\\sqrt{2}", T, "log of a root"), ("\\ln 6", "\\ln 2+\\ln 3", T, "log sum"),
    ("\\ln 6", "\\ln 5", F, "different log"), ("e^{-1}", "\\frac{1}{e}", T, "negative exponent"),
    ("\\frac{\\pi^2}{6}", "\\frac{1}{6}\\pi^{2}", T, "rewritten"), ("\\frac{\\pi^2}{6}", "\\frac{\\pi^2}{8}", F, "different constant"),
    ("x \\geq 5", "x >= 5", T, "ascii relation"), ("x \\leq 5", "x <= 5", T, "ascii relation"),
    ("x \\neq 2", "x != 2", T, "ascii not-equal"), ("x \\lt 3", "x < 3", T, "lt command"), ("x \\gt 3", "x > 3", T, "gt command"),
    ("x \\geq 5", "x > 5", F, "strict vs non-strict"), ("x \\leq 5", "x \\geq 5", F, "direction"),
    ("[2,5)", "x \\in [2, 5)", T, "membership in an interval"), ("[2,5)", "x \\in [2,5]", F, "closed end"),
    ("(1,2)", "[1,2]", F, "bracket types of an interval matter"), ("[1,2]", "(1,2)", F, "bracket types matter"),
    ("[1,2)", "(1,2]", F, "both ends swapped"), ("(0,1]", "0 < x \\le 1", T, "inequality as interval"),
    ("x \\in (-1, 1)", "-1 < x < 1", T, "membership vs chain"), ("x \\in (-1, 1)", "-1 \\le x < 1", F, "left end"),
    ("2, 3", "x=2 \\text{ or } x=3", T, "solution list written with or"), ("2, 3", "x=2, x=3", T, "solution list as assignments"),
    ("2, 3", "3, 2", T, "unordered solutions"), ("2, 3", "2", F, "missing solution"), ("2, 3", "2, 3, 4", F, "extra solution"),
    ("(1,2), (2,1)", "(2,1), (1,2)", T, "unordered pairs"), ("(1,2), (2,1)", "(1,2)", F, "one pair missing"),
    ("\\text{No solution}", "no solution", T, "case-insensitive text"), ("\\text{No solution}", "\\text{No Solution}", T, "case"),
    ("\\text{No solution}", "0", F, "a number is not 'no solution'"), ("\\text{None}", "none", T, "case"),
    ("\\frac{22}{7}", "\\frac{22}{7} \\approx 3.14", T, "approx chain: the exact value counts"),
    ("\\sqrt{2}", "\\sqrt{2} \\approx 1.414", T, "approx chain: the exact value counts"),
    ("\\sqrt{3}", "\\sqrt{2} \\approx 1.73", F, "approx chain with a wrong exact value"),
    ("\\frac{2\\sqrt{6}}{3}", "\\frac{2}{3}\\sqrt{6}", T, "coefficient"), ("\\frac{2\\sqrt{6}}{3}", "\\frac{2}{3}\\sqrt{3}", F, "radicand"),
    ("\\sqrt[3]{2}", "2^{1/3}", T, "cube root"), ("\\sqrt[3]{2}", "2^{1/2}", F, "square root"),
    ("a=1, b=2", "a=1, b=2", T, "two assignments"), ("a=1, b=2", "b=2, a=1", T, "assignments reordered"),
    ("a=1, b=2", "a=2, b=1", F, "values swapped"),
    ("\\{(x,y) : x+y=1\\}", "\\{(x,y) : x+y=1\\}", T, "identical set-builder text"),
    ("2^{2^{2}}", "16", T, "power tower"), ("10^{100}", "10^{100}", T, "googol"), ("10^{100}", "10^{99}", F, "googol"),
    ("\\frac{1}{2^{100}}", "2^{-100}", T, "tiny value"), ("\\frac{1}{2^{100}}", "0", F, "tiny is not zero"),
    ("\\cos\\frac{\\pi}{5}", "\\frac{1+\\sqrt{5}}{4}", T, "exact trig value"), ("\\cos\\frac{\\pi}{5}", "\\frac{1+\\sqrt{5}}{2}", F, "golden ratio"),
    ("\\sin\\frac{\\pi}{12}", "\\frac{\\sqrt{6}-\\sqrt{2}}{4}", T, "exact trig value"),
    ("\\arctan 1", "\\frac{\\pi}{4}", T, "inverse trig"), ("\\arctan 1", "\\frac{\\pi}{3}", F, "inverse trig"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}", T, "plus-minus expanded"), ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}", F, "one of two"),
    ("x^2+y^2=1", "y^2+x^2=1", T, "circle reordered"), ("x^2+y^2=1", "x^2+y^2=2", F, "radius"),
    ("y=x+1", "x-y+1=0", T, "line rearranged"), ("y=x+1", "x+y+1=0", F, "different line"),
]

OLY_TEMPLATES = [
    ("boxed", "Hence the answer is $\\boxed{{{a}}}$."),
    ("display-boxed", "**Final Answer**\n\\[\n\\boxed{{{a}}}\n\\]"),
    ("answer-line", "Proof sketch above.\n\nAnswer: ${a}$"),
]


def olympiad() -> list[dict]:
    out = []
    for k, (gold, pred, expected, reason) in enumerate(OLY):
        name, tpl = OLY_TEMPLATES[k % len(OLY_TEMPLATES)]
        out.append(rec("olympiad", tpl.format(a=pred), gold, pred, expected, f"{name}: {reason}"))
    return out


# ------------------------------------------------------------------ multiple choice
def multiple_choice() -> list[dict]:
    rows = [
        ("The correct option is (B).", "B", "(B)", T, "option in parentheses"),
        ("The correct option is (B).", "C", "(B)", F, "other letter"),
        ("Answer: B) 12", "B", "B) 12", T, "letter with a closing parenthesis and its value"),
        ("Answer: B)", "B", "B)", T, "letter with a closing parenthesis"),
        ("The answer is $\\boxed{\\text{(A)}}$.", "A", "\\text{(A)}", T, "AMC style boxed text"),
        ("The answer is $\\boxed{\\text{(A)}}$.", "(A)", "\\text{(A)}", T, "gold in parentheses"),
        ("The answer is $\\boxed{\\textbf{(E)}}$.", "E", "\\textbf{(E)}", T, "bold choice"),
        ("The answer is $\\boxed{\\textbf{(E)}\\ 42}$.", "E", "\\textbf{(E)}\\ 42", T, "AMC: letter and value"),
        ("The answer is $\\boxed{\\textbf{(D)}\\ 40}$.", "E", "\\textbf{(D)}\\ 40", F, "AMC: other letter"),
        ("The answer is (C).", "C", "(C)", T, "answer cue"), ("The answer is (C).", "D", "(C)", F, "answer cue"),
        ("Answer: c", "C", "c", T, "lowercase predicted letter"),
        ("Therefore, the answer is D.", "D", "D", T, "bare letter"), ("Therefore, the answer is D.", "A", "D", F, "bare letter"),
        ("**Answer: (A)**", "A", "(A)", T, "bold"), ("**Answer: (A)**", "B", "(A)", F, "bold"),
        ("The answer is (A) or (B).", "A", None, F, "hedging between two options"),
        ("Both A and C are correct.\n\nAnswer: A, C", "A", "A, C", F, "two letters for a single-answer question"),
        ("The answer is \\boxed{B}.", "B", "B", T, "boxed letter"), ("The answer is \\boxed{B}.", "D", "B", F, "boxed letter"),
        ("I choose option D.\nAnswer: D", "D", "D", T, "answer line"), ("Option (E) is right.\n#### E", "E", "E", T, "gsm8k marker"),
        ("The answer is $\\boxed{(C)}$", "\\text{(C)}", "(C)", T, "gold as text"),
        ("The answer is $\\boxed{(C)}$", "\\text{(B)}", "(C)", F, "gold as text"),
        ("Among the choices, (B) 6 matches.\nThe answer is (B).", "B", "(B)", T, "choice discussed then answered"),
        ("(A) is wrong because ... (B) is wrong because ... so the answer is (D).", "D", "(D)", T, "eliminated options before"),
        ("(A) is wrong because ... (B) is wrong because ... so the answer is (D).", "B", "(D)", F, "eliminated option is gold"),
        ("The answer is A.", "A", "A", T, "sentence end"),
        ("The answer is $e$.", "E", "e", T, "lowercase e written for choice E"),
        ("The answer is \\boxed{A}", "\\text{A}", "A", T, "gold in \\text"), ("The answer is \\boxed{A}", "\\text{B}", "A", F, "gold in \\text"),
        ("Answer: (D) 3/4", "D", "(D) 3/4", T, "letter then value"), ("Answer: (D) 3/4", "C", "(D) 3/4", F, "letter then value"),
    ]
    return [rec("multiple_choice", c, g, a, e, r) for c, g, a, e, r in rows]


# ------------------------------------------------------------------ chatty open-model outputs
def chatty() -> list[dict]:
    rows = [
        ("<think>\nOkay, let's see. 3 + 4 = 7.\n</think>\n\nThe sum is **7**.\n\n**Final Answer**\n\\[\n\\boxed{7}\n\\]", "7", "7", T,
         "R1-style think block then boxed display"),
        ("<think>\nMaybe 8? No, 7.\n</think>\n\n**Final Answer**\n\\[\n\\boxed{8}\n\\]", "7", "8", F, "R1-style, wrong"),
        ("To solve this, we add the numbers.\n\n$$\n\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}\n$$", "\\frac{5}{6}", "\\frac{5}{6}", T,
         "last display math, value on the right of the equation"),
        ("We get\n\\[\nx = \\frac{-b}{2a} = -\\frac{3}{2}\n\\]\nwhich is the vertex.", "-\\frac{3}{2}", "-\\frac{3}{2}", T,
         "display math chain, value last"),
        ("We get\n\\[\nx = -\\frac{3}{2}\n\\]", "\\frac{3}{2}", "-\\frac{3}{2}", F, "sign"),
        ("The area is $\\(12\\)$ square units.", "12", "12", T, "inline paren math"),
        ("The area is \\(12\\) square units.", "12", "12", T, "inline paren math"),
        ("The area is \\(21\\) square units.", "12", "21", F, "digits swapped"),
        ("Sure! Let's break it down.\n1. First, 5 * 3 = 15.\n2. Then 15 + 2 = 17.\n\nSo, the answer is 17.", "17", "17", T,
         "numbered steps then answer cue"),
        ("Sure! Let's break it down.\n1. First, 5 * 3 = 15.\n2. Then 15 + 2 = 17.\n\nSo, the answer is 17.", "15", "17", F,
         "intermediate result is the gold"),
        ("The probability is $\\frac{1}{6}$.", "\\frac16", "\\frac{1}{6}", T, "last inline math"),
        ("The probability is $\\frac{1}{6}$, which is about 0.167.", "\\frac16", "\\frac{1}{6}", T,
         "exact inline math then a rounded gloss"),
        ("The probability is $\\frac{1}{6}$.", "\\frac15", "\\frac{1}{6}", F, "wrong fraction"),
        ("Let $x$ be the number of apples. Then $2x + 3 = 11$, so $x = 4$.", "4", "x = 4", T, "last inline assignment"),
        ("Let $x$ be the number of apples. Then $2x + 3 = 11$, so $x = 4$.", "11", "x = 4", F, "gold is a number from the setup"),
        ("## Step 1: Compute\n$5^2 = 25$\n\n## Step 2: Subtract\n$25 - 9 = 16$\n\nThe final answer is: $\\boxed{16}$", "16", "16", T,
         "Llama step format"),
        ("## Step 1: Compute\n$5^2 = 25$\n\nThe final answer is: $\\boxed{25}$", "16", "25", F, "Llama step format, wrong"),
        ("Therefore, the solutions are $x = 2$ and $x = -3$.", "2, -3", "x = 2, x = -3", T,
         "two solutions in separate math spans (all of the final sentence)"),
        ("Therefore, the solutions are $x = 2$ and $x = -3$.", "2, 3", "x = 2, x = -3", F, "a sign differs"),
        ("The answer is \\boxed{5} \\boxed{6}", "5", None, F, "two different boxed candidates"),
        ("The answer is \\boxed{5} (or possibly \\boxed{6}).", "6", None, F, "two different boxed candidates"),
        ("I computed \\boxed{5} earlier. Rechecking, yes the answer is \\boxed{5}.", "5", "5", T, "the same box twice"),
        ("The answer is $\\boxed{\\frac{3}{4}}$. So the answer is $\\boxed{0.75}$.", "0.75", "0.75", T,
         "two boxes with equal values"),
        ("I'm sorry, but I can't determine the answer.", "3", None, F, "refusal"),
        ("The answer is not 5, it is 6.", "5", "6", F, "negated candidate"),
        ("It cannot be 4, so the answer is 3.", "3", "3", T, "answer cue after a rejected candidate"),
        ("So the total cost is $\\$45$.", "45", "\\$45", T, "escaped dollar in math"),
        ("So the total cost is $45.", "45", "45", T, "currency dollar, not math"),
        ("So the total cost is 45 dollars.", "45", "45 dollars", T, "unit word"),
        ("So the total cost is €45.", "45", "€45", T, "euro sign"),
        ("So the total cost is 45€.", "45", "45€", T, "euro suffix"),
        ("The area is 12 m².", "12", "12 m²", T, "unit with a superscript"),
        ("The area is 12 m².", "13", "12 m²", F, "unit with a superscript, wrong"),
        ("The rate is 15 percent.", "15\\%", "15 percent", T, "percent word"),
        ("The rate is 15 pct.", "15", "15 pct", T, "pct"),
        ("The rate is 15\\%.", "0.15", "15\\%", T, "percent vs fraction"),
        ("The rate is 15\\%.", "0.25", "15\\%", F, "percent, wrong"),
        ("The population is 7,425,000.", "7425000", "7,425,000", T, "separators"),
        ("The population is 7425000.", "7,425,000", "7425000", T, "separators in the gold"),
        ("The length is 1 000 m.", "1000", "1 000 m", T, "space separator with unit"),
        ("The price is 1000,99 euros.", "1000.99", "1000,99", T, "decimal comma (four digits before it)"),
        ("The fraction is 0,111.", "0.111", "0,111", T, "decimal comma after 0"),
        ("The value is .4", "0.4", ".4", T, "leading point"), ("The value is .4", "0.04", ".4", F, "leading point"),
        ("It is $\\displaystyle \\frac{1}{2}$.", "0.5", "\\displaystyle \\frac{1}{2}", T, "displaystyle"),
        ("It is $\\frac{1}{2}\\,$cm.", "\\frac12", "\\frac{1}{2}\\,", T, "spacing command and unit"),
        ("It is $5\\textnormal{ cm}$.", "5", "5\\textnormal{ cm}", T, "textnormal unit"),
        ("It is $5\\mbox{ cm}$.", "5", "5\\mbox{ cm}", T, "mbox unit"),
        ("It is $\\textbf{5}$.", "5", "\\textbf{5}", T, "textbf"),
        ("The angle is $60^\\circ$.", "60", "60^\\circ", T, "degrees"), ("The angle is $60^\\circ$.", "\\frac{\\pi}{3}", "60^\\circ", F,
         "the degree sign is notation: 60 is not pi/3"),
        ("The sum diverges, so the answer is $\\infty$.", "\\infty", "\\infty", T, "infinity"),
        ("Let me double-check: 12 * 12 = 144. Yes, 144.", "144", "144", T, "trailing confirmation"),
        ("Let me double-check: 12 * 12 = 144. Yes, 144.", "12", "144", F, "factor instead of product"),
        ("Okay so the final answer should be 2/3", "\\frac{2}{3}", "2/3", T, "plain slash fraction at the end"),
        ("Okay so the final answer should be 3/2", "\\frac{2}{3}", "3/2", F, "inverted"),
        ("Result: $(2, 3)$", "(2,3)", "(2, 3)", T, "point"), ("Result: $(2, 3)$", "[2,3]", "(2, 3)", F, "interval vs point brackets"),
        ("The matrix is\n$$\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}$$", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
         "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}", T, "bmatrix vs pmatrix"),
        ("The matrix is\n$$\\begin{bmatrix} 1 & 2 \\\\ 3 & 5 \\end{bmatrix}$$", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
         "\\begin{bmatrix} 1 & 2 \\\\ 3 & 5 \\end{bmatrix}", F, "one entry differs"),
        ("So $x \\geq 5$.", "x \\ge 5", "x \\geq 5", T, "inequality"), ("So $x \\geq 5$.", "x > 5", "x \\geq 5", F, "strictness"),
        ("The domain is $(-\\infty, 2) \\cup (2, \\infty)$.", "x \\neq 2", "(-\\infty, 2) \\cup (2, \\infty)", T, "not-equal as a union"),
        ("The domain is $(-\\infty, 2] \\cup (2, \\infty)$.", "(-\\infty,2)\\cup(2,\\infty)", "(-\\infty, 2] \\cup (2, \\infty)", F,
         "2 included"),
        ("\\boxed{\\left(1,\\frac{1}{2}\\right)}", "(1,0.5)", "\\left(1,\\frac{1}{2}\\right)", T, "left/right pair"),
        ("\\boxed{\\frac{3}{3}}", "1", "\\frac{3}{3}", T, "unreduced"), ("\\boxed{\\frac3{3}}", "1", "\\frac3{3}", T, "mixed brace frac"),
        ("\\boxed{\\frac13}", "\\frac{1}{3}", "\\frac13", T, "frac shorthand"), ("\\boxed{\\cfrac{1}{3}}", "\\frac{1}{3}", "\\cfrac{1}{3}", T, "cfrac"),
        ("\\boxed{\\sqrt3}", "\\sqrt{3}", "\\sqrt3", T, "sqrt shorthand"), ("\\boxed{\\sqrt3}", "3", "\\sqrt3", F, "sqrt of 3 is not 3"),
        ("\\boxed{}", "4", None, F, "empty box"), ("\\boxed{4", "4", None, F, "unclosed box"),
    ]
    return [rec("chatty", c, g, a, e, r) for c, g, a, e, r in rows]


# ------------------------------------------------------------------ crafted wrong answers (precision)
def adversarial() -> list[dict]:
    rows = [
        ("x", "x+\\sin(1000\\pi x)", "vanishes only at multiples of 1/1000"),
        ("x", "x+\\sin(2000\\pi x)", "vanishes only at multiples of 1/2000"),
        ("x", "x+\\cos(2000\\pi x)-1", "cos variant"), ("x", "x+\\tan(1000\\pi x)", "tan variant"),
        ("x", "x\\cos(2000\\pi x)", "product variant"), ("x^2", "x^2+\\sin(1000\\pi x)^2", "squared sine"),
        ("x+y", "x+y+\\sin(1000\\pi x)\\sin(1000\\pi y)", "two variables"),
        ("xy", "xy+\\sin(1000\\pi xy)", "product argument"), ("2x", "2x+\\sin(\\pi\\cdot 1000x)", "cdot inside"),
        ("x", "x + 10^{-30}\\sin(x)", "tiny perturbation"), ("x^2+1", "x^2+1+10^{-25}", "tiny constant"),
        ("\\pi", "\\pi+10^{-50}", "50 digits away"), ("\\pi", "\\pi+10^{-100}", "100 digits away"),
        ("\\pi", "\\pi-10^{-45}", "45 digits away"), ("\\sqrt{2}", "\\sqrt{2}+10^{-45}", "45 digits away"),
        ("e", "e+10^{-60}", "60 digits away"), ("0", "10^{-60}", "tiny is not zero"), ("1", "1+10^{-41}", "41 digits away"),
        ("2", "\\sqrt{4}+10^{-30}", "tiny offset"), ("\\frac{1}{3}", "\\frac{1}{3}+10^{-70}", "tiny offset"),
        ("(1,2)", "[1,2]", "closed interval vs open interval/point"), ("[1,2]", "(1,2)", "open vs closed"),
        ("[1,2)", "[1,2]", "right end"), ("(1,2]", "[1,2]", "left end"), ("(1,\\infty)", "[1,\\infty)", "left end"),
        ("0", "0=0", "identity"), ("1", "1=1", "identity"), ("x", "x=x", "identity"), ("11a+c", "7=11a+c", "an equation is not a value"),
        ("2\\pi", "6.28", "3 significant digits"), ("2\\pi", "6.283", "4 significant digits"), ("\\pi", "3.14", "3 significant digits"),
        ("\\pi", "3.1416", "5 significant digits, relative error 2.3e-6"), ("3.14", "\\pi", "decimal gold, exact pi"),
        ("\\sqrt{2}", "1.41", "3 significant digits"), ("\\sqrt{2}", "1.4142", "relative error 9.6e-6"), ("e", "2.718", "4 digits"),
        ("\\frac{1}{3}", "0.333", "three decimals"), ("\\frac{2}{3}", "0.667", "three decimals"), ("\\frac{1}{7}", "0.14285", "relative error 1e-5"),
        ("100", "99.99999", "terminating gold compares exactly"), ("\\frac{1}{2}", "0.5000001", "terminating gold compares exactly"),
        ("1", "0.9999999", "terminating gold compares exactly"),
    ]
    out = [rec("adversarial", f"Therefore the answer is $\\boxed{{{a}}}$.", g, a, F, r) for g, a, r in rows]
    good = [
        ("\\pi", "3.14159265", "rounded to 9 significant digits (within 1e-6)"),
        ("2\\pi", "6.2831853", "within relative precision 1e-6"), ("\\sqrt{2}", "1.414213562", "within 1e-6"),
        ("\\frac{1}{7}", "0.142857142857", "12 decimals"), ("\\pi", "\\pi+10^{-50}-10^{-50}", "the offset cancels"),
        ("x", "x+\\sin(1000\\pi x)-\\sin(1000\\pi x)", "the perturbation cancels"),
    ]
    out += [rec("adversarial", f"Therefore the answer is $\\boxed{{{a}}}$.", g, a, T, r) for g, a, r in good]
    boxes = [
        ("The answer is $\\boxed{3}$ or $\\boxed{4}$.", "3", "two different boxed candidates"),
        ("The answer is $\\boxed{3}$ or $\\boxed{4}$.", "4", "two different boxed candidates"),
        ("Candidates: \\boxed{1}, \\boxed{2}, \\boxed{3}, \\boxed{4}, \\boxed{5}", "3", "boxing every candidate"),
        ("The answer is \\boxed{2} \\boxed{3} \\boxed{5} \\boxed{7}.", "5", "boxing every candidate"),
        ("Final answer: \\boxed{A} \\boxed{B} \\boxed{C} \\boxed{D}", "C", "boxing every choice"),
        ("The answer is 3 or 4.", "3", "hedge with or"), ("The answer is either 3 or 4.", "4", "hedge with either"),
        ("The answer is 3, 4, 5, 6, 7.", "5", "listing candidates"), ("\\boxed{3, 4, 5, 6, 7}", "5", "listing candidates in a box"),
        ("\\boxed{x = 3 \\text{ or } x = 4}", "3", "two solutions for a single-valued gold"),
        ("\\boxed{\\pm 3}", "3", "two values for a single-valued gold"),
        ("\\boxed{[1, 100]}", "50", "an interval is not a number"),
        ("\\boxed{x}", "5", "a variable is not a number"), ("\\boxed{n}", "12", "the unknown itself"),
        ("\\boxed{\\text{any real number}}", "2", "vacuous text"),
        ("\\boxed{2} \n\nWait, actually it is \\boxed{3}.", "2", "the last boxed value (3) is what counts"),
        ("The answer is \\boxed{\\infty}", "5", "infinity"), ("\\boxed{0/0}", "1", "undefined"), ("\\boxed{1/0}", "5", "undefined"),
    ]
    out += [rec("adversarial", c, g, None, F, r) for c, g, r in boxes]
    later = [  # written after the code; the first run found one false positive ({1, 2} for (1, 2)), since fixed
        ('\\boxed{x+\\sin(2\\pi \\cdot 500 x)}', 'x', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{x + \\sin(3141592 x)\\cdot 10^{-3}}', 'x', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\frac{x^2-1}{x-1} + 10^{-70}}', 'x+1', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{x + \\lfloor x \\rfloor - \\lfloor x \\rfloor + 10^{-90}}', 'x', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\pi + e^{-200}}', '\\pi', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\sqrt{2} + \\frac{1}{10^{80}}}', '\\sqrt{2}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\pi \\cdot (1 + 10^{-30})}', '\\pi', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{3.1415926}', '\\pi', True, 'a decimal within rel_tol = 1e-6 of the irrational gold'),
        ('\\boxed{1.7320}', '\\sqrt{3}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{2.2360679}', '\\sqrt{5}', True, 'a decimal within rel_tol = 1e-6 of the irrational gold'),
        ('\\boxed{\\left[1, 2\\right]}', '(1,2)', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{[1,2)}', '[1,2]', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\{1, 2\\}}', '(1,2)', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{x = 3 = 4}', '3', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{3 = 4}', '4', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{1+1=2=3}', '3', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{2+2 = 5}', '5', False, 'crafted after the code: must never be judged correct'),
        ('The answer is $\\boxed{12}$, or maybe $\\boxed{13}$.', '12', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{12 \\text{ or } 13}', '13', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{12 \\lor 13}', '12', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\{12, 13\\}}', '12', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{12, 13}', '13', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{(A), (B)}', 'A', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{A \\text{ or } B}', 'B', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\text{A and B}}', 'A', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{AB}', 'A', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{x \\geq 3}', 'x > 3', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{x > 3}', '[3, \\infty)', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{x \\ne 3}', 'x < 3', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\begin{pmatrix}1&2\\end{pmatrix}}', '(1,2)', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{0.33333}', '\\frac{1}{3}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{0.\\overline{33}}', '\\frac{1}{3}+10^{-20}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{99.9\\%}', '1', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{1,000.5}', '1000', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\infty}', '10^{100}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{10^{1000}}', '\\infty', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{-\\infty}', '\\infty', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\frac{0}{0}}', '0', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\sqrt{-1}}', '1', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{i^4 + 10^{-50}}', '1', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\text{all real numbers}}', '\\text{no solution}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\text{No}}', '\\text{Yes}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{n}', 'n+1', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\sum_{k=1}^{n} k}', '\\frac{n(n-1)}{2}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\cos(2\\pi x) + x}', '1 + x', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{|x|}', 'x^{2}', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{e^{x}+10^{-40}x}', 'e^x', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{\\log_{10} 100}', '\\ln 100', False, 'crafted after the code: must never be judged correct'),
        ("Answer: 5\n\nWait, it's 6.\n\nAnswer: 6", '5', False, 'crafted after the code: must never be judged correct'),
        ('#### 5 or 6', '5', False, 'crafted after the code: must never be judged correct'),
        ('\\boxed{5}\n\n\\boxed{6}\n\n\\boxed{7}', '6', False, 'crafted after the code: must never be judged correct'),
        ('The answer is $\\boxed{\\dfrac{1}{2}}$ or $\\boxed{\\dfrac{2}{4}}$ or $\\boxed{3}$', '\\frac12', False, 'crafted after the code: must never be judged correct')
    ]
    out += [rec("adversarial", c, g, None, e, r) for c, g, e, r in later]
    return out


# ------------------------------------------------------------------ golds as users have them
def golds() -> list[dict]:
    rows = [
        ("The answer is \\boxed{12}.", "We have $a=3$ and $b=4$, so $ab = \\boxed{12}$.", "12", T, "gold is a worked solution"),
        ("The answer is \\boxed{13}.", "We have $a=3$ and $b=4$, so $ab = \\boxed{12}$.", "13", F, "gold is a worked solution"),
        ("The answer is \\boxed{\\frac{1}{2}}.", "Try \\boxed{1} first... no. In fact the value is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", T,
         "the LAST box of the worked solution is the gold"),
        ("The answer is \\boxed{1}.", "Try \\boxed{1} first... no. In fact the value is $\\boxed{\\frac{1}{2}}$.", "1", F,
         "an earlier box of the solution is not the gold"),
        ("The answer is 12.", "$12$", "12", T, "dollar-wrapped gold"), ("The answer is 12.", "$$12$$", "12", T, "display-wrapped gold"),
        ("The answer is 12.", "\\(12\\)", "12", T, "paren-wrapped gold"), ("The answer is 12.", "\\[12\\]", "12", T, "bracket-wrapped gold"),
        ("The answer is 12.", "12 cm", "12", T, "gold with units"), ("The answer is 12.", "12\\text{ cm}^2", "12", T, "gold with text units"),
        ("The answer is 12.", "\\$12", "12", T, "gold with a currency sign"), ("The answer is 12.", "12 dollars", "12", T, "gold with unit word"),
        ("The answer is 13.", "12 dollars", "13", F, "gold with unit word"), ("The answer is 12000.", "12,000", "12000", T, "gold separators"),
        ("The answer is 12000.", "12 000", "12000", T, "gold space separators"), ("The answer is 1200.", "12,000", "1200", F, "gold separators"),
        ("The answer is 5.", "Natalia sold 72 clips.\n#### 5", "5", T, "GSM8K answer field as gold"),
        ("The answer is 72.", "Natalia sold 72 clips.\n#### 5", "72", F, "GSM8K answer field: the #### number is the gold"),
        ("The answer is 0.5.", "\\text{0.5}", "0.5", T, "text-wrapped gold"), ("The answer is \\boxed{B}", "\\textbf{(B)}", "B", T, "choice gold"),
        ("The answer is 8", "  8  \n", "8", T, "whitespace around the gold"), ("The answer is 8", "8.", "8", T, "period after the gold"),
        ("The answer is 8", "x = 8", "8", T, "gold as an assignment"), ("The answer is 9", "x = 8", "9", F, "gold as an assignment"),
        ("The answer is $\\frac{\\sqrt{3}}{2}$", "The height is $\\boxed{\\dfrac{\\sqrt3}{2}}$ units.", "\\frac{\\sqrt{3}}{2}", T,
         "worked solution with dfrac and units"),
    ]
    return [rec("golds", c, g, a, e, r) for c, g, a, e, r in rows]


# ------------------------------------------------------------------ forms, each used as gold and as prediction
FORMS = [
    ("7,425,000", "7425000", T, "thousands separators"), ("1 000", "1000", T, "space separator"),
    ("1000,99", "1000.99", T, "decimal comma"), ("0,111", "0.111", T, "decimal comma after 0"), (".4", "0.4", T, "leading point"),
    ("\\$5", "5", T, "currency"), ("5€", "5", T, "euro"), ("12 m²", "12", T, "square metres"), ("15\\%", "15", T, "percent sign"),
    ("15 percent", "15", T, "percent word"), ("15 pct", "15", T, "pct"), ("\\dfrac{2}{7}", "\\frac{2}{7}", T, "dfrac"),
    ("\\tfrac{2}{7}", "2/7", T, "tfrac"), ("\\cfrac{2}{7}", "\\frac27", T, "cfrac vs shorthand"), ("\\frac3{4}", "0.75", T, "half-braced frac"),
    ("\\sqrt3", "3^{1/2}", T, "sqrt shorthand"), ("\\left(2,3\\right)", "(2,3)", T, "left/right"),
    ("4\\text{ cm}", "4", T, "text unit"), ("\\textbf{4}", "4", T, "textbf"), ("4\\textnormal{ kg}", "4", T, "textnormal unit"),
    ("\\mbox{4 kg}", "4", T, "mbox"), ("\\displaystyle\\frac{4}{5}", "0.8", T, "displaystyle"), ("4\\,000", "4000", T, "thin space separator"),
    ("\\varnothing", "\\emptyset", T, "empty set"), ("45^\\circ", "45", T, "degrees"), ("(0,\\infty)", "(0, \\infty)", T, "infinity"),
    ("x = 1/3", "1/3", T, "assignment"), ("k = \\frac13", "\\frac{1}{3}", T, "assignment"), ("x \\geq 5", "x >= 5", T, "geq"),
    ("x \\leq 5", "x <= 5", T, "leq"), ("x \\neq 5", "x != 5", T, "neq"), ("x \\lt 5", "x < 5", T, "lt"), ("x \\gt 5", "x > 5", T, "gt"),
    ("x \\in [1, 4)", "[1,4)", T, "membership"), ("7 = 11a+c", "11a+c", F, "an equation is not one of its sides"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", T, "matrix brackets"),
    ("(1,2,3)", "(1, 2, 3)", T, "tuple"), ("(1,2,3)", "(3,2,1)", F, "tuple order matters"),
    ("[0,1]\\cup[2,3]", "[2,3]\\cup[0,1]", T, "union order"), ("[0,1]\\cup[2,3]", "[0,3]", F, "union vs hull"),
    ("\\text{No solution}", "no solution", T, "text case"), ("\\text{(A)}", "A)", T, "choice forms"), ("(A)", "A", T, "choice forms"),
    ("A)", "\\text{(B)}", F, "other choice"), ("1000,99", "100099", F, "decimal comma is not a separator"),
    ("1 000", "100", F, "space separator dropped digits"), ("15\\%", "16", F, "different percent"),
]


def forms() -> list[dict]:
    out = []
    templates = ["The answer is $\\boxed{{{a}}}$.", "Final Answer: The final answer is ${a}$. I hope it is correct.",
                 "Thus:\n\\[\n\\boxed{{{a}}}\n\\]"]
    for k, (a, b, expected, reason) in enumerate(FORMS):
        for j, (gold, pred) in enumerate(((a, b), (b, a))):
            tpl = templates[(k + j) % len(templates)]
            out.append(rec("forms", tpl.format(a=pred), gold, pred, expected, f"{reason} ({'gold' if j == 0 else 'prediction'} side)"))
    return out


# ------------------------------------------------------------------ written after the code, first run kept honest
def heldout() -> list[dict]:
    """60 cases written after ``lenient`` existed and run once before any fix: lenient agreed on 56
    (0 false positives), math-verify on 52 (1 false positive). Three of the four misses were then fixed;
    heldout-006 (an expression = ... = value chain) stays a known miss."""
    rows = [
     # (completion, gold, answer, expected, reason)
     ("To find the remainder, we compute $2^{10} = 1024$ and $1024 \\mod 7 = 2$. Thus the remainder is $\\boxed{2}$.", "2", "2", T, "qwen boxed"),
     ("We have $\\binom{8}{3} = 56$ ways.\n\nThe final answer is $\\boxed{56}$.", "56", "56", T, "qwen final"),
     ("So the number of ways is 56.", "\\boxed{56}", "56", T, "gold boxed only"),
     ("The slope is $m = \\frac{4-2}{3-1} = 1$.", "1", "m = \\frac{4-2}{3-1} = 1", T, "assignment chain"),
     ("The slope is $m = \\frac{4-2}{3-1} = 1$.", "2", "m = \\frac{4-2}{3-1} = 1", F, "assignment chain wrong"),
     ("Thus, $a+b+c = \\boxed{12}$.", "12", "12", T, "boxed after expression"),
     ("The vertex is at $\\left(-\\frac{b}{2a}, f\\left(-\\frac{b}{2a}\\right)\\right) = (1, -4)$.", "(1,-4)", "(1, -4)", T, "point at end of chain"),
     ("**Solution:** ... \n\n**Answer:** $\\boxed{\\dfrac{5}{12}}$", "\\frac{5}{12}", "\\dfrac{5}{12}", T, "bold answer boxed"),
     ("The probability is $\\frac{5}{12} \\approx 0.4167$.", "\\frac{5}{12}", "\\frac{5}{12} \\approx 0.4167", T, "approx gloss"),
     ("The probability is approximately 0.4167.", "\\frac{5}{12}", "0.4167", F, "4-digit decimal for 5/12 (relative error 8e-5)"),
     ("Hence $x \\in \\{-2, 3\\}$.", "-2, 3", "x \\in \\{-2, 3\\}", T, "set membership"),
     ("The roots are $x=-2$ and $x=3$.", "3, -2", "x=-2, x=3", T, "two roots"),
     ("The roots are $x=-2$ and $x=3$.", "3", "x=-2, x=3", F, "two roots for one gold"),
     ("</think>\n\nThe area of the triangle is **24** square units.", "24", "24", T, "bold number, unmarked"),
     ("</think>\n\nThe area of the triangle is **42** square units.", "24", "42", F, "bold number wrong"),
     ("Final answer: 3/4", "\\frac34", "3/4", T, "plain final answer"),
     ("Final answer: 4/3", "\\frac34", "4/3", F, "plain final answer inverted"),
     ("The answer is $\\boxed{10\\%}$.", "10", "10\\%", T, "percent boxed"),
     ("The answer is $\\boxed{\\$10.50}$.", "10.50", "\\$10.50", T, "currency boxed"),
     ("The answer is $\\boxed{10.05}$.", "10.50", "10.05", F, "digits swapped"),
     ("It takes 2 hours and 30 minutes, i.e. 2.5 hours.", "2.5", "2.5", T, "last number with unit"),
     ("The perimeter is $2(3+4) = 14$ cm.", "14", "2(3+4) = 14", T, "numeric chain"),
     ("The perimeter is $2(3+4) = 14$ cm.", "7", "2(3+4) = 14", F, "numeric chain wrong"),
     ("So $f(2) = 7$.", "7", "f(2) = 7", T, "function value"),
     ("So $f(2) = 7$.", "2", "f(2) = 7", F, "argument is not the value"),
     ("The minimum value is $\\boxed{-\\frac{9}{4}}$.", "-\\frac{9}{4}", "-\\frac{9}{4}", T, "negative fraction"),
     ("The minimum value is $\\boxed{-2.25}$.", "-\\frac{9}{4}", "-2.25", T, "decimal"),
     ("The minimum value is $\\boxed{\\frac{9}{4}}$.", "-\\frac{9}{4}", "\\frac{9}{4}", F, "sign"),
     ("Therefore the answer is \\(\\sqrt{13}\\).", "\\sqrt{13}", "\\sqrt{13}", T, "paren math after cue"),
     ("Therefore the answer is \\(\\sqrt{31}\\).", "\\sqrt{13}", "\\sqrt{31}", F, "paren math wrong"),
     ("The distance is $\\sqrt{(3-0)^2+(4-0)^2}=5$.", "5", "\\sqrt{(3-0)^2+(4-0)^2}=5", T, "numeric chain with sqrt"),
     ("The sequence is $1, 4, 9, 16$.", "1, 4, 9, 16", "1, 4, 9, 16", T, "list"),
     ("The answer is $\\boxed{(-\\infty, 2]}$.", "(-\\infty,2]", "(-\\infty, 2]", T, "interval"),
     ("The answer is $\\boxed{(-\\infty, 2)}$.", "(-\\infty,2]", "(-\\infty, 2)", F, "interval end"),
     ("The answer is $\\boxed{x \\le 2}$.", "(-\\infty,2]", "x \\le 2", T, "inequality vs interval"),
     ("ANSWER: 17", "17", "17", T, "uppercase answer"),
     ("answer: seventeen", "17", "seventeen", F, "number in words (not read)"),
     ("The GCD is 6, so the LCM is $\\frac{12 \\cdot 18}{6} = 36$.", "36", "\\frac{12 \\cdot 18}{6} = 36", T, "chain"),
     ("$$\\boxed{\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}}$$", "\\begin{pmatrix}3\\\\-1\\end{pmatrix}", "\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}", T, "vector"),
     ("The answer is \\boxed{\\text{Sunday}}.", "\\text{Sunday}", "\\text{Sunday}", T, "day"),
     ("The answer is \\boxed{\\text{Monday}}.", "\\text{Sunday}", "\\text{Monday}", F, "day wrong"),
     ("The answer is \\boxed{\\textbf{(C) } 24}", "C", "\\textbf{(C) } 24", T, "amc bold with space"),
     ("The answer is $\\boxed{2\\sqrt{5}}$ units.", "\\sqrt{20}", "2\\sqrt{5}", T, "radical"),
     ("The answer is $\\boxed{4\\sqrt{5}}$ units.", "\\sqrt{20}", "4\\sqrt{5}", F, "radical wrong"),
     ("The answer is $\\boxed{3 \\text{ and } 5}$.", "3, 5", "3 \\text{ and } 5", T, "and list"),
     ("The answer is $\\boxed{1.5}$ hours.", "\\frac{3}{2}", "1.5", T, "decimal exact"),
     ("The answer is $\\boxed{0.67}$.", "\\frac{2}{3}", "0.67", F, "rounded decimal"),
     ("I'll compute: 15 + 27 = 42. So 42 is the answer.", "42", "42", T, "answer at sentence start"),
     ("First, 6*7=42. Then subtract 2 to get 40. The result: 40", "40", "40", T, "result colon"),
     ("First, 6*7=42. Then subtract 2 to get 40. The result: 40", "42", "40", F, "intermediate is gold"),
     ("So $\\angle ABC = 45^\\circ$.", "45", "\\angle ABC = 45^\\circ", T, "angle assignment"),
     ("The number is $\\boxed{1{,}024}$.", "1024", "1{,}024", T, "braced comma"),
     ("The largest is $\\boxed{999}$ and the smallest is $\\boxed{100}$.", "999", None, F, "two different boxes"),
     ("Answer: $\\boxed{e^{i\\pi}+1=0}$", "0", "e^{i\\pi}+1=0", F, "identity"),
     ("$$\\frac{d}{dx}x^3 = 3x^2$$", "3x^2", "\\frac{d}{dx}x^3 = 3x^2", F, "derivative equation (not read as a value)"),
     ("The answer is $-\\infty$.", "-\\infty", "-\\infty", T, "minus infinity"),
     ("The answer is $\\boxed{\\pi r^2}$.", "\\pi r^2", "\\pi r^2", T, "formula"),
     ("The answer is $\\boxed{2\\pi r}$.", "\\pi r^2", "2\\pi r", F, "formula wrong"),
     ("The answer is $\\boxed{\\frac{1}{\\sqrt{2}}}$", "\\frac{\\sqrt2}{2}", "\\frac{1}{\\sqrt{2}}", T, "rationalised"),
     ("The answer is $\\boxed{0.7071}$", "\\frac{\\sqrt2}{2}", "0.7071", F, "4 decimals"),
    ]
    return [rec("heldout", c, g, a, e, r) for c, g, a, e, r in rows]


def main() -> None:
    sets = {"gsm8k": gsm8k(), "math": math_set(), "aime": aime(), "olympiad": olympiad(),
            "multiple_choice": multiple_choice(), "chatty": chatty(), "adversarial": adversarial(), "golds": golds(),
            "forms": forms(), "heldout": heldout()}
    total = 0
    for name, rows in sets.items():
        with open(HERE / f"{name}.jsonl", "w") as f:
            for i, r in enumerate(rows):
                f.write(json.dumps({"id": f"{name}-{i:03d}", **r}, ensure_ascii=False) + "\n")
        total += len(rows)
        print(f"{name}: {len(rows)} cases, {sum(not r['expected'] for r in rows)} wrong")
    print("total", total)


if __name__ == "__main__":
    main()
