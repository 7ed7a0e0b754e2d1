"""Benchmark the Flywheel verifier against math-verify on the labelled corpus, in one run, on one core.

    .venv/bin/python bench/verifier.py                  # ~1-2 min; needs `pip install -e '.[bench]'` (math-verify)
    .venv/bin/python bench/verifier.py --http           # also HTTP throughput of `flywheel serve-reward`

Reports, on the corpus (tests/unit/rewards/corpus/*.jsonl, 676 labelled completion/gold pairs written
from the answer formats of GSM8K, MATH, AIME, olympiad, multiple-choice and chatty open-model outputs):
accuracy / precision / recall / false positives of each extraction mode (``marked``, ``lenient``,
``answer`` on the bare answers) and of math-verify (completions as given, and bare answers as
``$answer$``); verifications per second of each on one core and p50 / p99 per-item latency, with
the ratio to math-verify; the same on simple numeric answers; the worst latency on pathological
inputs against the time limit. Everything is measured in this one process, pinned to one core
together with our worker process, so ratios are comparable even on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = REPO / "tests" / "unit" / "rewards" / "corpus"

PATHOLOGICAL = [
    ("\\boxed{5^{5^{5^{5}}}}", "5"),
    ("\\boxed{9^{9^{9}}}", "1"),
    ("\\boxed{(10^{6})!}", "1"),
    ("\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}", "1"),
    ("\\boxed{(x+1)^{300}(x-1)^{300} - (x^2-1)^{300} + (x+2)^{299}}", "(x+2)^{299}+1"),
    ("\\boxed{(9999!)^{999}}", "1"),
    ("\\boxed{\\sin(x)^{200}+\\cos(x)^{200}}", "\\sin(2x)^{100}"),
    ("\\boxed{" + "x+" * 400 + "1}", "400x+1"),
    ("\\boxed{" + "a" * 5000 + "}", "1"),
    ("Answer: a" + " " * 99_000 + "b", "b"),
    ("\\boxed{" * 20_000, "1"),
    ("$1 word " * 20_000, "1"),
]


def load_corpus() -> list[dict]:
    return [json.loads(line) for path in sorted(CORPUS.glob("*.jsonl")) for line in path.read_text().splitlines()]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def quality(predicted: list[bool], expected: list[bool]) -> dict:
    tp = sum(p and e for p, e in zip(predicted, expected))
    fp = sum(p and not e for p, e in zip(predicted, expected))
    fn = sum(e and not p for p, e in zip(predicted, expected))
    return {"accuracy": sum(p == e for p, e in zip(predicted, expected)) / len(expected),
            "precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 1.0,
            "false_positives": fp, "false_negatives": fn}


def speed(lat: list[float]) -> dict:
    return {"per_s": len(lat) / sum(lat), "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
            "max_ms": max(lat) * 1e3}


def simple_numeric(n: int, seed: int = 0) -> list[dict]:
    """Distinct GSM8K/MATH-style numeric items (no cache can help), half of them wrong."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            v = rng.randint(-10**6, 10**6)
            gold, ans = str(v), str(v if i % 2 else v + rng.randint(1, 9))
        elif kind == 1:
            a, b = rng.randint(1, 999), rng.randint(2, 999)
            gold, ans = f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{a * 2}}}{{{b * 2}}}" if i % 2 else f"\\frac{{{a + 1}}}{{{b}}}"
        elif kind == 2:
            v = rng.randint(1, 10**6) / 100
            gold, ans = f"{v:.2f}", f"{v:.2f}" if i % 2 else f"{v + 0.01:.2f}"
        else:
            v = rng.randint(1000, 10**7)
            gold, ans = str(v), f"{v:,}" if i % 2 else f"{v + 10:,}"
        completion = f"Step by step ... so the answer is $\\boxed{{{ans}}}$." if i % 3 else f"Work.\n#### {ans}"
        items.append({"completion": completion, "gold": gold, "answer": ans, "expected": bool(i % 2)})
    return items


# ------------------------------------------------------------------ the verifiers, one item at a time


def ours(items: list[dict], mode: str) -> tuple[list[bool], list[float]]:
    from rewards import VerifyConfig, verify

    cfg = VerifyConfig(extraction=mode, num_workers=1)
    out, lat = [], []
    for it in items:
        text = (it["answer"] or "") if mode == "answer" else it["completion"]
        t0 = time.perf_counter()
        out.append(verify(text, it["gold"], cfg).correct)
        lat.append(time.perf_counter() - t0)
    return out, lat


def cpu_cost(items: list[dict], mode: str) -> list[float]:
    """CPU seconds per item of the same work done in this process (extraction, fast path, comparison),
    without the worker round trip: a latency that does not depend on what else the machine runs."""
    from rewards import VerifyConfig
    from rewards.equivalence import GoldError, compare
    from rewards.verifier import _in_process

    cfg = VerifyConfig(extraction=mode)
    out = []
    for it in items:
        t0 = time.process_time()
        decided = _in_process(it["completion"], it["gold"], cfg)
        if not hasattr(decided, "status"):
            gold, pred, _ = decided
            try:
                compare(gold, pred, cfg)
            except GoldError:
                pass
        out.append(time.process_time() - t0)
    return out


def math_verify(items: list[dict], answer_only: bool = False) -> tuple[list[bool], list[float]]:
    """math-verify's documented use, ``verify(parse(gold), parse(completion))``, with its defaults.

    The gold is parsed as given and, when that finds nothing, as ``$gold$`` (the more generous of the
    two). ``answer_only`` hands it the bare answer as ``$answer$`` instead of the completion."""
    from math_verify import parse, verify

    out, lat = [], []
    for it in items:
        t0 = time.perf_counter()
        try:
            gold = parse(it["gold"]) or parse(f"${it['gold']}$")
            ans = parse(f"${it['answer']}$" if answer_only else it["completion"]) if (
                it["answer"] or not answer_only) else []
            ok = bool(verify(gold, ans))
        except Exception:  # noqa: BLE001 - count a crash as "not verified"
            ok = False
        out.append(ok)
        lat.append(time.perf_counter() - t0)
    return out, lat


def library_bench(results: dict, numeric_n: int) -> None:
    from rewards import VerifyConfig, verify
    from rewards.worker_pool import shared_pool

    shared_pool(1).warm_up(wait=True)
    cases = load_corpus()
    expected = [c["expected"] for c in cases]
    with_answer = [c for c in cases if c["answer"] is not None]
    ours(cases[:50], "lenient")  # warm caches and sympy's first-use costs on both sides
    math_verify(cases[:50])
    rows = {}
    for mode in ("marked", "lenient"):
        pred, lat = ours(cases, mode)
        rows[f"flywheel {mode}"] = {**quality(pred, expected), **speed(lat),
                                    "misjudged": [c["id"] for c, p in zip(cases, pred) if p != c["expected"]]}
    pred, lat = math_verify(cases)
    rows["math-verify"] = {**quality(pred, expected), **speed(lat),
                           "misjudged": [c["id"] for c, p in zip(cases, pred) if p != c["expected"]],
                           "false_positive_ids": [c["id"] for c, p in zip(cases, pred) if p and not c["expected"]]}
    cpu_cost(cases, "lenient")  # first uses of each comparison kind in this process (lazy sympy imports)
    cpu = cpu_cost(cases, "lenient")
    results["cpu_lenient"] = {"p50_ms": percentile(cpu, 50) * 1e3, "p99_ms": percentile(cpu, 99) * 1e3,
                              "max_ms": max(cpu) * 1e3}
    exp_a = [c["expected"] for c in with_answer]
    pred, lat = ours(with_answer, "answer")
    rows["flywheel answer (bare answers)"] = {**quality(pred, exp_a), **speed(lat)}
    pred, lat = math_verify(with_answer, answer_only=True)
    rows["math-verify (bare answers as $answer$)"] = {**quality(pred, exp_a), **speed(lat),
                                                      "false_positive_ids": [c["id"] for c, p in zip(with_answer, pred)
                                                                             if p and not c["expected"]]}
    results["corpus"] = {"n": len(cases), "wrong_cases": expected.count(False), "with_answer": len(with_answer),
                         "rows": rows}

    numeric = simple_numeric(numeric_n)
    exp = [it["expected"] for it in numeric]
    pred, lat = ours(numeric, "marked")
    mv_pred, mv_lat = math_verify(numeric)
    results["simple_numeric"] = {"n": len(numeric), "flywheel": {**quality(pred, exp), **speed(lat)},
                                 "math_verify": {**quality(mv_pred, exp), **speed(mv_lat)}}

    cfg = VerifyConfig(num_workers=1, timeout_s=2.0, extraction="lenient")
    worst = []
    for completion, gold in PATHOLOGICAL:
        t0 = time.perf_counter()
        v = verify(completion, gold, cfg)
        worst.append((time.perf_counter() - t0, v.status))
    results["pathological"] = {"n": len(PATHOLOGICAL), "time_limit_s": cfg.timeout_s,
                               "max_latency_s": max(w for w, _ in worst), "statuses": [s for _, s in worst]}


# ------------------------------------------------------------------ HTTP (optional)


def http_bench(results: dict, clients: int, seconds: float, workers: int) -> None:
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve-reward", "--http_port", str(port),
                             "--grpc_port", "0", "--workers", str(workers)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        cases = load_corpus()
        lat: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop = [0.0]
        start = threading.Barrier(clients + 1, action=lambda: stop.__setitem__(0, time.monotonic() + seconds))

        def client(k: int) -> None:
            rng = random.Random(k)
            with httpx.Client(timeout=60) as c:
                start.wait()
                while time.monotonic() < stop[0]:
                    case = rng.choice(cases)
                    t0 = time.perf_counter()
                    r = c.post(f"{url}/v1/verify", json={"items": [{"completion": case["completion"],
                                                                    "gold": case["gold"]}]})
                    with lock:
                        lat.append(time.perf_counter() - t0)
                        errors[0] += r.status_code != 200

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        start.wait()
        t0 = stop[0] - seconds
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        results["http"] = {"clients": clients, "server_workers": workers, "requests": len(lat), "errors": errors[0],
                           "req_per_s": len(lat) / wall, "p50_ms": percentile(lat, 50) * 1e3,
                           "p99_ms": percentile(lat, 99) * 1e3}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def report(r: dict) -> str:
    c = r["corpus"]
    mv = c["rows"]["math-verify"]
    lines = [f"load average at start: {r['load_start']}, at end: {r['load_end']}; one core ({r['core']})", "",
             f"corpus: {c['n']} cases ({c['wrong_cases']} must be judged wrong; {c['with_answer']} with a bare answer)", "",
             "| verifier | accuracy | precision | recall | false pos. | verif/s | vs math-verify | p50 ms | p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in c["rows"].items():
        ref = c["rows"]["math-verify (bare answers as $answer$)"] if "bare" in name else mv
        lines.append(f"| {name} | {row['accuracy']:.1%} | {row['precision']:.1%} | {row['recall']:.1%} | "
                     f"{row['false_positives']} | {row['per_s']:.0f} | {row['per_s'] / ref['per_s']:.1f}x | "
                     f"{row['p50_ms']:.2f} | {row['p99_ms']:.1f} |")
    cpu = r["cpu_lenient"]
    lines += ["", f"CPU time per item of the lenient work done in-process (load-independent, no worker round trip): "
              f"p50 {cpu['p50_ms']:.2f} ms, p99 {cpu['p99_ms']:.1f} ms, max {cpu['max_ms']:.1f} ms"]
    n = r["simple_numeric"]
    lines += ["", f"simple numeric answers ({n['n']} distinct items, marked): flywheel {n['flywheel']['per_s']:.0f}/s "
              f"(accuracy {n['flywheel']['accuracy']:.1%}, p99 {n['flywheel']['p99_ms']:.2f} ms), math-verify "
              f"{n['math_verify']['per_s']:.0f}/s (accuracy {n['math_verify']['accuracy']:.1%}, p99 "
              f"{n['math_verify']['p99_ms']:.2f} ms): {n['flywheel']['per_s'] / n['math_verify']['per_s']:.1f}x"]
    p = r["pathological"]
    lines.append(f"pathological inputs: {p['n']}, worst latency {p['max_latency_s']:.2f} s with a "
                 f"{p['time_limit_s']:g} s limit (statuses: {', '.join(p['statuses'])})")
    if "http" in r:
        h = r["http"]
        lines.append(f"HTTP, {h['clients']} concurrent clients, 1 item/request, {h['server_workers']} verifier "
                     f"workers: {h['req_per_s']:.0f} req/s, p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, "
                     f"{h['errors']} errors / {h['requests']} requests")
    lines.append("")
    for name, row in c["rows"].items():
        if row.get("false_positive_ids"):
            lines.append(f"{name} false positives: {', '.join(row['false_positive_ids'])}")
    lines.append(f"flywheel lenient misjudged: {', '.join(c['rows']['flywheel lenient']['misjudged']) or 'none'}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numeric", type=int, default=400, help="simple numeric items")
    ap.add_argument("--http", action="store_true", help="also measure `flywheel serve-reward` over HTTP")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15.0, help="HTTP load duration")
    ap.add_argument("--http-workers", type=int, default=2)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    try:
        import math_verify  # noqa: F401 - only checks that it is installed
    except ImportError:
        sys.exit("bench/verifier.py needs math-verify: pip install -e '.[bench]'")
    core = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {core})  # one core, for both verifiers and our worker process
    results: dict = {"cpu": os.cpu_count(), "core": core, "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    library_bench(results, args.numeric)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    if args.http:
        http_bench(results, args.clients, args.seconds, args.http_workers)
    results["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
