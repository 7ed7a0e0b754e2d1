"""Benchmark the Flywheel verifier against math-verify on the same labelled set, in one run.

    .venv/bin/python bench/verifier.py                 # everything (needs `pip install -e .[bench]`)
    .venv/bin/python bench/verifier.py --skip-http     # library numbers only

Reports: accuracy / precision / recall of both verifiers on the labelled cases
(tests/unit/rewards/verifier_cases.py); verifications per second of both on one core, on the
labelled set and on simple numeric answers (ratio); p50 / p99 per-item latency; the worst latency
on pathological inputs against the time limit; and HTTP throughput of `flywheel serve-reward`
with 32 concurrent clients. Prints a markdown table; ``--json FILE`` also writes the numbers.
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
sys.path.insert(0, str(REPO / "tests" / "unit" / "rewards"))

from verifier_cases import labelled  # noqa: E402

PATHOLOGICAL = [
    ("\\boxed{5^{5^{5^{5}}}}", "5"),
    ("\\boxed{9^{9^{9}}}", "1"),
    ("\\boxed{(10^{6})!}", "1"),
    ("\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}", "1"),
    ("\\boxed{(x+1)^{300}(x-1)^{300} - (x^2-1)^{300} + (x+2)^{299}}", "(x+2)^{299}+1"),
    ("\\boxed{(9999!)^{999}}", "1"),
    ("\\boxed{\\binom{10000}{5000}^{999}}", "1"),
    ("\\boxed{\\sin(x)^{200}+\\cos(x)^{200}}", "\\sin(2x)^{100}"),
    ("\\boxed{(x+y+z)^{60} - (x+y+z)^{60}}", "0"),
    ("\\boxed{" + "x+" * 400 + "1}", "400x+1"),
    ("\\boxed{" + "\\frac{1}{" * 25 + "2" + "}" * 25 + "}", "2"),
    ("\\boxed{" + "a" * 5000 + "}", "1"),
]


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
        items.append({"completion": completion, "gold": gold, "expected": bool(i % 2)})
    return items


# ------------------------------------------------------------------ the two verifiers


def ours_single(items: list[dict], cfg) -> tuple[list[bool], list[float]]:
    from rewards import verify

    out, lat = [], []
    for it in items:
        t0 = time.perf_counter()
        out.append(verify(it["completion"], it["gold"], cfg).correct)
        lat.append(time.perf_counter() - t0)
    return out, lat


def math_verify_single(items: list[dict], answer_only: bool = False) -> tuple[list[bool], list[float]]:
    """math-verify's documented use: ``verify(parse(gold), parse(completion))``.

    ``answer_only`` hands it the bare answer as ``$answer$`` instead of the completion, isolating
    its equivalence check from its extraction (which only looks at LaTeX-delimited / boxed text).
    """
    from math_verify import parse, verify

    out, lat = [], []
    for it in items:
        t0 = time.perf_counter()
        try:
            gold = parse(f"${it['gold']}$")
            ans = parse(f"${it['answer']}$" if answer_only else it["completion"])
            ok = bool(verify(gold, ans))
        except Exception:  # noqa: BLE001 - count a crash as "not verified"
            ok = False
        out.append(ok)
        lat.append(time.perf_counter() - t0)
    return out, lat


def library_bench(results: dict, repeats: int, numeric_n: int) -> None:
    from rewards import VerifyConfig
    from rewards.worker_pool import shared_pool

    cfg = VerifyConfig(num_workers=1)
    shared_pool(1).warm_up(wait=True)
    cases = labelled()
    expected = [c["expected"] for c in cases]

    pred, lat = ours_single(cases, cfg)  # warm (caches, sympy first-use costs) then measure
    mv_pred, mv_lat = math_verify_single(cases)
    lat, mv_lat = [], []
    for _ in range(repeats):
        pred, l1 = ours_single(cases, cfg)
        mv_pred, l2 = math_verify_single(cases)
        lat += l1
        mv_lat += l2
    mv_answer_pred, _ = math_verify_single(cases, answer_only=True)
    results["labelled"] = {
        "n": len(cases), "wrong_cases": expected.count(False),
        "math_verify_answer_only": quality(mv_answer_pred, expected),
        "ours": {**quality(pred, expected), "per_s": len(lat) / sum(lat), "p50_ms": percentile(lat, 50) * 1e3,
                 "p99_ms": percentile(lat, 99) * 1e3},
        "math_verify": {**quality(mv_pred, expected), "per_s": len(mv_lat) / sum(mv_lat),
                        "p50_ms": percentile(mv_lat, 50) * 1e3, "p99_ms": percentile(mv_lat, 99) * 1e3},
        "ours_misjudged": [(c["gold"], c["answer"], c["expected"]) for c, p in zip(cases, pred) if p != c["expected"]],
        "math_verify_misjudged": [(c["gold"], c["answer"], c["expected"]) for c, p in zip(cases, mv_pred)
                                  if p != c["expected"]],
    }
    numeric = simple_numeric(numeric_n)
    pred, lat = ours_single(numeric, cfg)
    mv_pred, mv_lat = math_verify_single(numeric)
    exp = [it["expected"] for it in numeric]
    results["simple_numeric"] = {
        "n": len(numeric),
        "ours": {**quality(pred, exp), "per_s": len(lat) / sum(lat), "p50_ms": percentile(lat, 50) * 1e3,
                 "p99_ms": percentile(lat, 99) * 1e3},
        "math_verify": {**quality(mv_pred, exp), "per_s": len(mv_lat) / sum(mv_lat),
                        "p50_ms": percentile(mv_lat, 50) * 1e3, "p99_ms": percentile(mv_lat, 99) * 1e3},
    }
    patho_cfg = VerifyConfig(num_workers=1, timeout_s=2.0)
    worst = []
    for completion, gold in PATHOLOGICAL:
        t0 = time.perf_counter()
        from rewards import verify

        v = verify(completion, gold, patho_cfg)
        worst.append((time.perf_counter() - t0, v.status))
    results["pathological"] = {"n": len(PATHOLOGICAL), "time_limit_s": patho_cfg.timeout_s,
                               "max_latency_s": max(w for w, _ in worst),
                               "statuses": [s for _, s in worst], "pool_restarts": shared_pool(1).restarts}


# ------------------------------------------------------------------ HTTP


def http_bench(results: dict, clients: int, seconds: float, workers: int) -> None:
    import httpx

    from tests.conftest import free_port

    port = free_port()
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
        cases = labelled()
        lat: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop = [0.0]  # set when every client is built (TLS contexts etc.), before any request
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
                    dt = time.perf_counter() - t0
                    with lock:
                        lat.append(dt)
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
    lab, num = r["labelled"], r["simple_numeric"]
    o, m, a = lab["ours"], lab["math_verify"], lab["math_verify_answer_only"]
    lines = [
        f"labelled set: {lab['n']} cases ({lab['wrong_cases']} must be judged wrong)", "",
        "| verifier | accuracy | precision | recall | verif/s (1 core) | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| flywheel | {o['accuracy']:.1%} | {o['precision']:.1%} | {o['recall']:.1%} | {o['per_s']:.0f} | "
        f"{o['p50_ms']:.2f} | {o['p99_ms']:.1f} |",
        f"| math-verify | {m['accuracy']:.1%} | {m['precision']:.1%} | {m['recall']:.1%} | {m['per_s']:.0f} | "
        f"{m['p50_ms']:.2f} | {m['p99_ms']:.1f} |",
        f"| math-verify, bare answers as `$answer$` | {a['accuracy']:.1%} | {a['precision']:.1%} | "
        f"{a['recall']:.1%} | | | |",
        f"| ratio | | | | {o['per_s'] / m['per_s']:.1f}x | | |", "",
        f"simple numeric answers ({num['n']} distinct items): flywheel {num['ours']['per_s']:.0f}/s "
        f"(accuracy {num['ours']['accuracy']:.1%}, p99 {num['ours']['p99_ms']:.2f} ms), math-verify "
        f"{num['math_verify']['per_s']:.0f}/s (accuracy {num['math_verify']['accuracy']:.1%}, "
        f"p99 {num['math_verify']['p99_ms']:.2f} ms): **{num['ours']['per_s'] / num['math_verify']['per_s']:.1f}x**",
    ]
    p = r["pathological"]
    lines.append(f"pathological inputs: {p['n']}, worst latency {p['max_latency_s']:.2f} s with a "
                 f"{p['time_limit_s']:g} s limit (statuses: {', '.join(p['statuses'])})")
    if "http" in r:
        h = r["http"]
        lines.append(f"HTTP, {h['clients']} concurrent clients, 1 item/request, {h['server_workers']} verifier "
                     f"workers: {h['req_per_s']:.0f} req/s, p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, "
                     f"{h['errors']} errors / {h['requests']} requests")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="passes over the labelled set per verifier")
    ap.add_argument("--numeric", type=int, default=2000, help="simple numeric items")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15.0, help="HTTP load duration")
    ap.add_argument("--http-workers", type=int, default=2)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    try:
        import math_verify  # noqa: F401
    except ImportError:
        sys.exit("bench/verifier.py needs math-verify: pip install -e '.[bench]'")
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, for us and our workers
    results: dict = {"cpu": os.cpu_count()}
    library_bench(results, args.repeats, args.numeric)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    if not args.skip_http:
        http_bench(results, args.clients, args.seconds, args.http_workers)
    print(report(results))
    if results["labelled"]["ours_misjudged"]:
        print("flywheel misjudged:", results["labelled"]["ours_misjudged"])
    print(f"math-verify misjudged {len(results['labelled']['math_verify_misjudged'])}: "
          f"{results['labelled']['math_verify_misjudged'][:40]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
