"""Sustained concurrent load on the reward verifier and the rollout service API, with bad requests mixed in.

    .venv/bin/python bench/load.py --seconds 60 --concurrency 8            # both services, one after the other
    .venv/bin/python bench/load.py --service reward --seconds 15
    .venv/bin/python bench/load.py --service rollout --rollout-url http://127.0.0.1:8360 --pid 1234

Without ``--reward-url`` / ``--rollout-url`` it starts each server as a real subprocess on 127.0.0.1
(``flywheel serve-reward``; ``flywheel serve-rollout`` on the tiny random-weight checkpoint of
``tests.fixtures.tiny_checkpoint`` with its own local Ray) and stops it afterwards. ``--concurrency`` asyncio
clients (httpx for HTTP, ``grpc.aio`` for gRPC) send requests back to back, loopback only, for
``--seconds`` after a short warm-up; every ``--bad-every``-th request is a bad one (malformed JSON, a
too-long prompt or item, ``n`` or the batch too large, a wrong type) that must get its 4xx (gRPC:
INVALID_ARGUMENT / RESOURCE_EXHAUSTED) while the good ones keep succeeding.

Reports per endpoint: requests, errors, throughput, p50/p95/p99 latency; the RSS of the server process
(and of its process tree) after warm-up ("start"), half-way and at the end; and whether ``/healthz``
still answers after the run. ``--json FILE`` writes the same numbers (the tests read them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from learner.actor import free_port  # noqa: E402  (light: no torch at import)

MiB = 2**20


# ---------------------------------------------------------------------------------------------- records
@dataclass
class EndpointStats:
    """What one endpoint saw: latencies of the good requests, and how the bad ones were answered."""

    good: int = 0
    errors: int = 0
    """Good requests that failed (non-200, wrong body, exception)."""
    bad: int = 0
    bad_refused: int = 0
    """Bad requests answered with the expected refusal (4xx / gRPC error code)."""
    latencies: list[float] = field(default_factory=list)
    """Seconds per good request."""
    error_samples: list[str] = field(default_factory=list)

    def note_error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(msg[:300])


@dataclass
class Request:
    """One request kind: ``send`` returns None when the answer is what was expected, else what went wrong."""

    endpoint: str
    bad: bool
    send: Callable[[], Awaitable[str | None]]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


# ---------------------------------------------------------------------------------------------- memory
def tree_snapshot(pid: int) -> dict[int, tuple[str, int]]:
    """``{pid: (name, RSS bytes)}`` of ``pid`` and all its descendants (processes that end meanwhile are skipped)."""
    import psutil

    root = psutil.Process(pid)
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            out[p.pid] = (p.name(), p.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return out


SAMPLE_AT = (0.0, 0.25, 0.5, 0.75, 1.0)
"""When RSS is sampled, as fractions of the measured time: "start" (after warm-up), quarters, "end"."""


def memory_report(pid: int, snaps: list[dict[int, tuple[str, int]]]) -> dict[str, Any]:
    """RSS of ``pid`` and of its whole tree over the run (start, mid, end; every sample in the series), and
    the series of every process of the tree that lived through the run (name, MiB), largest growth first."""
    start, mid, end = snaps[0], snaps[len(snaps) // 2], snaps[-1]
    row: dict[str, Any] = {}
    for when, snap in (("start", start), ("mid", mid), ("end", end)):
        row[f"{when}_mib"] = round(snap.get(pid, ("", 0))[1] / MiB, 1)
        row[f"tree_{when}_mib"] = round(sum(r for _, r in snap.values()) / MiB, 1)
    row["growth_mib"] = round(row["end_mib"] - row["start_mib"], 1)
    row["tree_growth_mib"] = round(row["tree_end_mib"] - row["tree_start_mib"], 1)
    row["tree_series_mib"] = [round(sum(r for _, r in snap.values()) / MiB, 1) for snap in snaps]
    lived = [q for q in end if all(q in snap for snap in snaps)]
    procs = [{"pid": q, "name": end[q][0], "series_mib": [round(snap[q][1] / MiB, 1) for snap in snaps]} for q in lived]
    for p in procs:
        p["growth_mib"] = round(p["series_mib"][-1] - p["series_mib"][0], 1)
    row["processes"] = sorted(procs, key=lambda p: -p["growth_mib"])
    return row


# ---------------------------------------------------------------------------------------------- servers
def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM the server we started (it drains and stops its own children), SIGKILL what is left after 60 s."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    for c in alive:  # only descendants of the server this script started
        try:
            c.kill()
        except psutil.NoSuchProcess:
            pass
    return code


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path, health_url: str, timeout: float,
           what: str) -> subprocess.Popen:
    """Start a server process (output to ``log_path``) and wait until ``health_url`` answers 200."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(health_url, proc, timeout)
    except BaseException:
        if proc.poll() is None:
            _stop(proc)
        raise RuntimeError(f"{what} did not start; see {log.name}") from None
    return proc


def start_reward_server(log_dir: Path) -> tuple[subprocess.Popen, str, str]:
    http, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve-reward", "--http_port", str(http), "--grpc_port",
           str(grpc_port), "--workers", "2"]
    proc = _spawn(cmd, {**os.environ, "PYTHONUNBUFFERED": "1"}, log_dir / "reward-server.log",
                  f"http://127.0.0.1:{http}/healthz", 180, "reward server")
    return proc, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"


def start_rollout_server(log_dir: Path) -> tuple[subprocess.Popen, str]:
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3

    model = build_tiny_qwen3(log_dir / "tiny-qwen3")
    http, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve-rollout", "--model", str(model),
           "--http_port", str(http), "--grpc_port", str(grpc_port), "--ray_address", "local",
           "--max_prompt_tokens", "256", "--max_tokens", "256", "--max_n", "8",
           "--rollout.dtype", "float32", "--rollout.max_model_len", "1024", "--rollout.kv_cache_gib", "1",
           "--rollout.max_in_flight", "8", "--rollout.num_cpus_per_worker", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           "RAY_TMPDIR": str(log_dir),  # a Ray of its own, never a cluster someone else started
           "RAY_raylet_start_wait_time_s": "180"}  # a busy machine starts Ray slowly
    proc = _spawn(cmd, env, log_dir / "rollout-server.log", f"http://127.0.0.1:{http}/healthz", 900,
                  "rollout server")
    return proc, f"http://127.0.0.1:{http}"


# ---------------------------------------------------------------------------------------------- requests
def _expect(status: int, body: bytes, want: int, check: Callable[[Any], bool] | None = None) -> str | None:
    if status != want:
        return f"HTTP {status} (wanted {want}): {body[:200]!r}"
    if check is not None:
        try:
            if not check(json.loads(body)):
                return f"unexpected body: {body[:200]!r}"
        except ValueError:
            return f"not JSON: {body[:200]!r}"
    return None


def reward_requests(http, http_url: str, grpc_target: str | None) -> list[Request]:
    """Good: HTTP and gRPC batch verify of 8 items. Bad: malformed JSON, 1025 items (over the default
    max_batch_items), a non-string completion; over gRPC a batch that is too large."""
    rng = random.Random(0)
    url = http_url + "/v1/verify"

    def items(k: int) -> list[dict]:
        out = []
        for i in range(k):
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            answer = a + b if rng.random() < 0.7 else a + b + 1
            out.append({"id": str(i), "completion": f"{a} + {b} = \\boxed{{{answer}}}", "gold": str(a + b)})
        return out

    async def good_http() -> str | None:
        batch = items(8)
        r = await http.post(url, json={"items": batch})
        return _expect(r.status_code, r.content, 200, lambda j: len(j["verdicts"]) == 8 and all(
            v["status"] in ("correct", "wrong") for v in j["verdicts"]))

    async def bad_json() -> str | None:
        r = await http.post(url, content=b'{"items": [{"completion": "1", ',
                            headers={"content-type": "application/json"})
        return _expect(r.status_code, r.content, 422)

    async def too_many_items() -> str | None:
        r = await http.post(url, json={"items": [{"completion": "1", "gold": "1"}] * 1025})
        return _expect(r.status_code, r.content, 422, lambda j: "max_batch_items" in j["detail"])

    async def wrong_type() -> str | None:
        r = await http.post(url, json={"items": [{"completion": 5, "gold": "1"}]})
        return _expect(r.status_code, r.content, 422)

    reqs = [Request("reward HTTP /v1/verify", False, good_http),
            Request("reward HTTP /v1/verify", True, bad_json),
            Request("reward HTTP /v1/verify", True, too_many_items),
            Request("reward HTTP /v1/verify", True, wrong_type)]
    if grpc_target:
        import grpc

        from protos import reward_pb2, reward_pb2_grpc

        channel = grpc.aio.insecure_channel(grpc_target)
        stub = reward_pb2_grpc.RewardServiceStub(channel)

        async def good_grpc() -> str | None:
            batch = items(8)
            resp = await stub.Verify(reward_pb2.VerifyRequest(items=[reward_pb2.VerifyItem(**it) for it in batch]),
                                     timeout=60)
            return None if len(resp.verdicts) == 8 else f"{len(resp.verdicts)} verdicts for 8 items"

        async def grpc_too_large() -> str | None:
            try:
                await stub.Verify(reward_pb2.VerifyRequest(items=[reward_pb2.VerifyItem(completion="1", gold="1")]
                                                           * 1025), timeout=60)
            except grpc.aio.AioRpcError as e:
                return None if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else f"gRPC {e.code().name}"
            return "gRPC accepted a batch of 1025 items"

        reqs += [Request("reward gRPC Verify", False, good_grpc), Request("reward gRPC Verify", True, grpc_too_large)]
    return reqs


def rollout_requests(http, http_url: str) -> list[Request]:
    """Good: ``/v1/completions`` (n=2, 16 tokens) and ``/v1/rollouts`` (2 prompts x n=2, 16 tokens).
    Bad: malformed JSON, a prompt of ~5000 tokens, n = 100000, an unknown model."""
    names = ["Ann", "Bob", "Cleo", "Dev"]
    rng = random.Random(1)

    def prompt() -> str:
        return f"{rng.choice(names)} has {rng.randint(1, 99)} coins and gets {rng.randint(1, 99)} more."

    async def completions() -> str | None:
        r = await http.post(http_url + "/v1/completions", json={"prompt": prompt(), "max_tokens": 16, "n": 2})
        return _expect(r.status_code, r.content, 200, lambda j: len(j["choices"]) == 2
                       and j["usage"]["completion_tokens"] > 0)

    async def rollouts() -> str | None:
        body = {"prompts": [{"text": prompt(), "gold": "1"}, {"text": prompt(), "gold": "2"}],
                "sampling": {"n": 2, "max_tokens": 16}}
        r = await http.post(http_url + "/v1/rollouts", json=body)
        return _expect(r.status_code, r.content, 200, lambda j: len(j["groups"]) == 2 and all(
            len(s["completion_token_ids"]) == len(s["logprobs"]) == len(s["versions"]) > 0
            for g in j["groups"] for s in g["samples"]))

    async def bad_json() -> str | None:
        r = await http.post(http_url + "/v1/completions", content=b'{"prompt": "hi", "max_tokens": ',
                            headers={"content-type": "application/json"})
        return _expect(r.status_code, r.content, 400, lambda j: "JSON" in j["error"]["message"])

    async def too_long() -> str | None:
        r = await http.post(http_url + "/v1/completions", json={"prompt": "x " * 5000, "max_tokens": 4})
        return _expect(r.status_code, r.content, 400, lambda j: "tokens" in j["error"]["message"])

    async def n_too_large() -> str | None:
        r = await http.post(http_url + "/v1/rollouts", json={"prompts": [{"text": "hi"}],
                                                             "sampling": {"n": 100000, "max_tokens": 4}})
        return _expect(r.status_code, r.content, 400, lambda j: "n = 100000" in j["error"]["message"])

    async def unknown_model() -> str | None:
        r = await http.post(http_url + "/v1/completions", json={"model": "no-such-model", "prompt": "hi"})
        return _expect(r.status_code, r.content, 404)

    return [Request("rollout HTTP /v1/completions", False, completions),
            Request("rollout HTTP /v1/rollouts", False, rollouts),
            Request("rollout HTTP /v1/completions", True, bad_json),
            Request("rollout HTTP /v1/completions", True, too_long),
            Request("rollout HTTP /v1/rollouts", True, n_too_large),
            Request("rollout HTTP /v1/completions", True, unknown_model)]


# ---------------------------------------------------------------------------------------------- driver
async def drive(requests: list[Request], health_url: str, pids: list[int], seconds: float, concurrency: int,
                bad_every: int, warmup: float) -> dict[str, Any]:
    """Run ``concurrency`` clients for ``warmup + seconds``; RSS sampled at :data:`SAMPLE_AT` of the measured time."""
    import httpx

    good = [r for r in requests if not r.bad]
    bad = [r for r in requests if r.bad]
    stats: dict[str, EndpointStats] = {r.endpoint: EndpointStats() for r in requests}
    counter = 0
    t_start = time.monotonic()
    t_measure = t_start + warmup
    t_end = t_measure + seconds

    async def client() -> None:
        nonlocal counter
        while (now := time.monotonic()) < t_end:
            counter += 1
            k = counter
            req = bad[(k // bad_every) % len(bad)] if bad and bad_every and k % bad_every == 0 else good[k % len(good)]
            t0 = time.perf_counter()
            try:
                problem = await req.send()
            except Exception as e:  # noqa: BLE001 - any failure of a request is counted, not fatal
                problem = f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            if now < t_measure:
                continue  # warm-up: not counted
            s = stats[req.endpoint]
            if req.bad:
                s.bad += 1
                s.bad_refused += problem is None
                if problem is not None and len(s.error_samples) < 5:
                    s.error_samples.append(f"bad request not refused as expected: {problem}"[:300])
            else:
                s.good += 1
                if problem is None:
                    s.latencies.append(dt)
                else:
                    s.note_error(problem)

    async def sampler() -> list[dict[int, dict[int, tuple[str, int]]]]:
        out = []
        for frac in SAMPLE_AT:
            await asyncio.sleep(max(0.0, t_measure + frac * seconds - time.monotonic()))
            out.append({pid: tree_snapshot(pid) for pid in pids})
        return out

    samples_task = asyncio.create_task(sampler())
    await asyncio.gather(*(client() for _ in range(concurrency)))
    rss = await samples_task
    elapsed = time.monotonic() - t_measure
    async with httpx.AsyncClient(timeout=10) as h:
        try:
            health = (await h.get(health_url)).status_code
        except httpx.HTTPError as e:
            health = f"{type(e).__name__}: {e}"
    endpoints = {}
    for name, s in stats.items():
        lat = sorted(s.latencies)
        endpoints[name] = {"requests": s.good, "errors": s.errors, "bad": s.bad, "bad_refused": s.bad_refused,
                           "throughput_rps": round(len(lat) / elapsed, 2),
                           "p50_ms": round(1000 * percentile(lat, 50), 1),
                           "p95_ms": round(1000 * percentile(lat, 95), 1),
                           "p99_ms": round(1000 * percentile(lat, 99), 1), "error_samples": s.error_samples}
    memory = {str(pid): memory_report(pid, [snap[pid] for snap in rss]) for pid in pids}
    return {"seconds": round(elapsed, 1), "concurrency": concurrency, "endpoints": endpoints, "memory": memory,
            "health_after": health}


async def run_service(name: str, url: str, grpc_target: str | None, pids: list[int], args) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        reqs = reward_requests(http, url, grpc_target) if name == "reward" else rollout_requests(http, url)
        return await drive(reqs, url + "/healthz", pids, args.seconds, args.concurrency, args.bad_every,
                           args.warmup)


# ---------------------------------------------------------------------------------------------- output
def format_table(service: str, r: dict[str, Any], labels: dict[int, str]) -> str:
    lines = [f"### {service}: {r['concurrency']} concurrent clients, {r['seconds']} s "
             f"(healthz after: {r['health_after']})", "",
             "| endpoint | good requests | errors | req/s | p50 ms | p95 ms | p99 ms | bad requests refused |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in r["endpoints"].items():
        lines.append(f"| {name} | {e['requests']} | {e['errors']} | {e['throughput_rps']} | {e['p50_ms']} | "
                     f"{e['p95_ms']} | {e['p99_ms']} | {e['bad_refused']}/{e['bad']} |")
    lines += ["", "| process | RSS start MiB | mid | end | growth | tree RSS start MiB | mid | end | growth |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for pid, m in r["memory"].items():
        lines.append(f"| {labels.get(int(pid), pid)} | {m['start_mib']} | {m['mid_mib']} | {m['end_mib']} | "
                     f"{m['growth_mib']:+} | {m['tree_start_mib']} | {m['tree_mid_mib']} | {m['tree_end_mib']} | "
                     f"{m['tree_growth_mib']:+} |")
    for pid, m in r["memory"].items():
        grew = ", ".join(f"{p['name']} {p['series_mib']}" for p in m["processes"][:3] if p["growth_mib"] > 0)
        lines.append(f"- {labels.get(int(pid), pid)}: tree of {len(m['processes'])} processes, RSS MiB at "
                     f"0/25/50/75/100% of the run: {m['tree_series_mib']}; grew most: {grew or 'none'}")
    for name, e in r["endpoints"].items():
        for s in e["error_samples"]:
            lines.append(f"- {name}: {s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--service", choices=["reward", "rollout", "both"], default="both")
    p.add_argument("--seconds", type=float, default=30.0, help="measured time per service (after warm-up)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    p.add_argument("--bad-every", type=int, default=10, help="every k-th request is a bad one (0: none)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring starts")
    p.add_argument("--reward-url", help="use this running reward server (HTTP base URL) instead of starting one")
    p.add_argument("--reward-grpc", help="its gRPC host:port (with --reward-url)")
    p.add_argument("--rollout-url", help="use this running rollout server (HTTP base URL) instead of starting one")
    p.add_argument("--pid", type=int, action="append", default=[],
                   help="process whose RSS to sample when attaching to a running server (repeatable)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--log-dir", help="keep the started servers' logs (and the tiny checkpoint) here "
                                     "instead of a temporary folder")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.seconds <= 0:
        p.error("--concurrency must be >= 1 and --seconds > 0")
    services = ["reward", "rollout"] if args.service == "both" else [args.service]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flywheel-load-") as tmp:
        if args.log_dir:
            tmp = args.log_dir
            Path(tmp).mkdir(parents=True, exist_ok=True)
        for name in services:
            attach = args.reward_url if name == "reward" else args.rollout_url
            proc = None
            if attach:
                url, grpc_target, pids = attach.rstrip("/"), args.reward_grpc if name == "reward" else None, args.pid
                labels = {pid: f"pid {pid}" for pid in pids}
            else:
                t0 = time.monotonic()
                if name == "reward":
                    proc, url, grpc_target = start_reward_server(Path(tmp))
                else:
                    (proc, url), grpc_target = start_rollout_server(Path(tmp)), None
                print(f"{name} server ready in {time.monotonic() - t0:.1f} s at {url}", flush=True)
                pids, labels = [proc.pid], {proc.pid: f"{name} server (tree: + its workers)"}
            try:
                results[name] = asyncio.run(run_service(name, url, grpc_target, pids, args))
            finally:
                if proc is not None:
                    results.setdefault(name, {})["exit_code"] = _stop(proc)
            print(format_table(name, results[name], labels) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = any(e["errors"] or e["bad_refused"] != e["bad"] for r in results.values()
                 for e in r["endpoints"].values()) or any(r["health_after"] != 200 for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
