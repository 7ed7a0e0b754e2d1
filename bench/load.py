"""Sustained load on the reward verifier and the rollout service API, with hostile requests mixed in.

    .venv/bin/python bench/load.py --seconds 60                    # both services, one after the other
    .venv/bin/python bench/load.py --service reward --seconds 20
    .venv/bin/python bench/load.py --service rollout --rollout-url http://127.0.0.1:8360 --pid 1234

Without ``--reward-url`` / ``--rollout-url`` it starts each server as a real subprocess on 127.0.0.1
(``flywheel serve-reward``; ``flywheel serve-rollout`` on the tiny random-weight checkpoint of
``tests.fixtures.tiny_checkpoint`` with its own local Ray) and stops it afterwards. ``--concurrency``
asyncio clients (httpx for HTTP, ``grpc.aio`` for gRPC) send requests back to back, loopback only.

The measured time alternates blocks of ``--block`` seconds: *clean* blocks send only normal requests,
*hostile* blocks make every ``--hostile-every``-th request (default 10, i.e. 10%) a hostile one, so
both kinds of block see the same machine and the same server; ``--seconds`` is the measured time of
each kind. Hostile requests (``tests/integration/rewards/hostile_inputs.py`` for the reward service):
malformed bodies (broken or deeply nested JSON, NaN, lone surrogates, booleans and huge integers for
integers, invalid UTF-8 on the gRPC wire) that must be refused with a 4xx / INVALID_ARGUMENT, and
well-formed batches of hostile content (whitespace bombs, nesting, power towers, factorials, junk)
that must get their verdicts; rollout: empty stop strings, seeds above 2^64, lone surrogates, empty
prompts and lists, NaN, unauthenticated weight updates: any answer below 500 is accepted there.

Reports per endpoint and kind of block: normal requests, their errors, throughput, p50/p95/p99; the
hostile requests and how many got the expected answer; every 5xx (must be 0); the p99 of normal
requests in hostile blocks over clean blocks (the ratio, from one run); the RSS of the server and of
its process tree sampled every ``--sample-every`` seconds and once more a second after the load
stops (growth is that last sample minus the first); ``/healthz`` after the run. ``--json FILE``
writes the same numbers (the tests read them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 2**20
SERVER_ERROR_CODES = ("INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED")
"""gRPC codes counted as server errors (the 5xx of gRPC)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- records
@dataclass
class Outcome:
    """What one request got: ``status`` (HTTP code or gRPC code name) and ``problem`` (None = as expected)."""

    status: int | str
    problem: str | None = None

    @property
    def server_error(self) -> bool:
        return (isinstance(self.status, int) and self.status >= 500) or self.status in SERVER_ERROR_CODES


@dataclass
class Request:
    endpoint: str
    hostile: bool
    send: Callable[[], Awaitable[Outcome]]


@dataclass
class BlockStats:
    """One endpoint in one kind of block (clean or hostile)."""

    normal: int = 0
    errors: int = 0
    """Normal requests that did not get their expected answer."""
    hostile: int = 0
    hostile_expected: int = 0
    """Hostile requests answered as expected (a refusal with the right code, or verdicts)."""
    server_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    """Seconds per normal request that succeeded."""
    samples: list[str] = field(default_factory=list)

    def note(self, msg: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(msg[:300])

    def summary(self, seconds: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {"requests": self.normal, "errors": self.errors, "hostile": self.hostile,
                "hostile_expected": self.hostile_expected, "server_errors": self.server_errors,
                "throughput_rps": round(len(lat) / max(seconds, 1e-9), 2),
                "p50_ms": round(1e3 * percentile(lat, 50), 1),
                "p95_ms": round(1e3 * percentile(lat, 95), 1), "p99_ms": round(1e3 * percentile(lat, 99), 1),
                "samples": self.samples}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


# ---------------------------------------------------------------------------------------------- memory
def tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, RSS of ``pid`` and all its descendants), bytes; processes that end meanwhile are skipped."""
    import psutil

    root = psutil.Process(pid)
    own = root.memory_info().rss
    total = own
    for p in root.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return own, total


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
           "FLYWHEEL_ROLLOUT_TOKEN": os.urandom(16).hex(),  # write endpoints need it; the load never has it
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(32).hex(),  # its own Ray, token-authenticated
           "RAY_TMPDIR": str(log_dir),  # a Ray of its own, never a cluster someone else started
           "RAY_raylet_start_wait_time_s": "180"}  # a busy machine starts Ray slowly
    proc = _spawn(cmd, env, log_dir / "rollout-server.log", f"http://127.0.0.1:{http}/healthz", 900,
                  "rollout server")
    return proc, f"http://127.0.0.1:{http}"


# ---------------------------------------------------------------------------------------------- requests
def _http_outcome(status: int, body: bytes, want: Callable[[int], bool],
                  check: Callable[[Any], bool] | None = None) -> Outcome:
    if not want(status):
        return Outcome(status, f"HTTP {status}: {body[:200]!r}")
    if check is not None:
        try:
            if not check(json.loads(body)):
                return Outcome(status, f"unexpected body: {body[:200]!r}")
        except ValueError:
            return Outcome(status, f"not JSON: {body[:200]!r}")
    return Outcome(status)


def _is(code: int) -> Callable[[int], bool]:
    return lambda s: s == code


def _refused(s: int) -> bool:
    return 400 <= s < 500


def reward_requests(http, http_url: str, grpc_target: str | None) -> list[Request]:
    """Normal: HTTP and gRPC batches of 8 arithmetic items. Hostile: the malformed bodies and raw gRPC
    messages of ``hostile_inputs`` (refused), and batches of 8 hostile items (verdicts)."""
    from tests.integration.rewards.hostile_inputs import bad_bodies, bad_grpc_payloads, nasty_items

    rng = random.Random(0)
    url = http_url + "/v1/verify"
    bodies = bad_bodies(random.Random(1))
    counter = {"body": 0}

    def items(k: int) -> list[dict]:
        out = []
        for i in range(k):
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            answer = a + b if rng.random() < 0.7 else a + b + 1
            out.append({"id": str(i), "completion": f"{a} + {b} = \\boxed{{{answer}}}", "gold": str(a + b)})
        return out

    def verdicts_for(n: int) -> Callable[[Any], bool]:
        return lambda j: len(j["verdicts"]) == n and all(v["status"] for v in j["verdicts"])

    async def normal_http() -> Outcome:
        r = await http.post(url, json={"items": items(8)})
        return _http_outcome(r.status_code, r.content, _is(200), lambda j: len(j["verdicts"]) == 8 and all(
            v["status"] in ("correct", "wrong") for v in j["verdicts"]))

    async def malformed_http() -> Outcome:
        body = bodies[counter["body"] % len(bodies)]
        counter["body"] += 1
        r = await http.post(url, content=body, headers={"content-type": "application/json"})
        return _http_outcome(r.status_code, r.content, _refused)

    async def nasty_http() -> Outcome:
        r = await http.post(url, json={"items": nasty_items(rng, 8, 20_000)})
        return _http_outcome(r.status_code, r.content, _is(200), verdicts_for(8))

    reqs = [Request("reward HTTP /v1/verify", False, normal_http),
            Request("reward HTTP /v1/verify", True, malformed_http),
            Request("reward HTTP /v1/verify", True, nasty_http)]
    if grpc_target:
        import grpc

        from protos import reward_pb2, reward_pb2_grpc

        channel = grpc.aio.insecure_channel(grpc_target)
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        raw = channel.unary_unary("/flywheel.reward.v1.RewardService/Verify")
        payloads = bad_grpc_payloads()

        async def call(coro, want: str) -> Outcome:
            try:
                resp = await coro
            except grpc.aio.AioRpcError as e:
                name = e.code().name
                return Outcome(name, None if name == want else f"gRPC {name}: {e.details()}")
            return Outcome("OK", None if want == "OK" else f"gRPC OK, wanted {want}") if resp is not None else \
                Outcome("OK", "no response")

        def batch(its: list[dict]) -> Any:
            return reward_pb2.VerifyRequest(items=[reward_pb2.VerifyItem(**it) for it in its])

        async def normal_grpc() -> Outcome:
            return await call(stub.Verify(batch(items(8)), timeout=120), "OK")

        async def malformed_grpc() -> Outcome:
            payload = payloads[counter["body"] % len(payloads)]
            counter["body"] += 1
            return await call(raw(payload, timeout=120), "INVALID_ARGUMENT")

        async def nasty_grpc() -> Outcome:
            return await call(stub.Verify(batch(nasty_items(rng, 8, 20_000)), timeout=120), "OK")

        reqs += [Request("reward gRPC Verify", False, normal_grpc), Request("reward gRPC Verify", True, malformed_grpc),
                 Request("reward gRPC Verify", True, nasty_grpc)]
    return reqs


def rollout_requests(http, http_url: str) -> list[Request]:
    """Normal: ``/v1/completions`` (n=2, 16 tokens) and ``/v1/rollouts`` (2 prompts x n=2, 16 tokens).
    Hostile: malformed and out-of-range bodies on every endpoint; any answer below 500 is accepted."""
    names = ["Ann", "Bob", "Cleo", "Dev"]
    rng = random.Random(1)

    def prompt() -> str:
        return f"{rng.choice(names)} has {rng.randint(1, 99)} coins and gets {rng.randint(1, 99)} more."

    async def completions() -> Outcome:
        r = await http.post(http_url + "/v1/completions", json={"prompt": prompt(), "max_tokens": 16, "n": 2})
        return _http_outcome(r.status_code, r.content, _is(200), lambda j: len(j["choices"]) == 2
                             and j["usage"]["completion_tokens"] > 0)

    async def rollouts() -> Outcome:
        body = {"prompts": [{"text": prompt(), "gold": "1"}, {"text": prompt(), "gold": "2"}],
                "sampling": {"n": 2, "max_tokens": 16}}
        r = await http.post(http_url + "/v1/rollouts", json=body)
        return _http_outcome(r.status_code, r.content, _is(200), lambda j: len(j["groups"]) == 2 and all(
            len(s["completion_token_ids"]) == len(s["logprobs"]) == len(s["versions"]) > 0
            for g in j["groups"] for s in g["samples"]))

    hostile = [
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": '), ("/v1/completions", b"[" * 100_000),
        ("/v1/completions", b'{"prompt": "\\ud800 hi", "max_tokens": 4}'),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 4, "seed": 36893488147419103232}'),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 4, "stop": [""]}'),
        ("/v1/completions", b'{"prompt": "", "max_tokens": 4}'),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 4, "temperature": NaN}'),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 1000000000000}'),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 4, "n": true}'),
        ("/v1/completions", ('{"prompt": "' + "x " * 5000 + '", "max_tokens": 4}').encode()),
        ("/v1/chat/completions", b'{"messages": [], "max_tokens": 4}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 4}'),
        ("/v1/rollouts", b'{"prompts": [], "sampling": {"n": 1, "max_tokens": 4}}'),
        ("/v1/rollouts", b'{"prompts": [{"text": "hi"}], "sampling": {"n": 100000, "max_tokens": 4}}'),
        ("/v1/weights", b'{"version": 100000000000000000000, "path": "/etc/passwd"}'),
    ]
    counter = {"k": 0}

    async def hostile_request() -> Outcome:
        path, body = hostile[counter["k"] % len(hostile)]
        counter["k"] += 1
        r = await http.post(http_url + path, content=body, headers={"content-type": "application/json"})
        return _http_outcome(r.status_code, r.content, lambda s: s < 500)

    return [Request("rollout HTTP /v1/completions", False, completions),
            Request("rollout HTTP /v1/rollouts", False, rollouts),
            Request("rollout HTTP (hostile, all endpoints)", True, hostile_request)]


# ---------------------------------------------------------------------------------------------- driver
async def drive(requests: list[Request], health_url: str, pids: list[int], args) -> dict[str, Any]:
    """``concurrency`` clients over ``warmup`` + alternating clean / hostile blocks; RSS sampled throughout."""
    import httpx

    normal = [r for r in requests if not r.hostile]
    hostile = [r for r in requests if r.hostile]
    stats = {kind: {r.endpoint: BlockStats() for r in requests} for kind in ("clean", "hostile")}
    n_blocks = max(1, round(args.seconds / args.block))
    t_measure = time.monotonic() + args.warmup
    t_end = t_measure + 2 * n_blocks * args.block
    counter = 0

    def block_kind(t: float) -> str | None:
        if t < t_measure:
            return None  # warm-up
        return ("clean", "hostile")[int((t - t_measure) // args.block) % 2]

    async def client() -> None:
        nonlocal counter
        while (now := time.monotonic()) < t_end:
            counter += 1
            k = counter
            kind = block_kind(now) or ("hostile" if k % 2 else "clean")
            if kind == "hostile" and hostile and args.hostile_every and k % args.hostile_every == 0:
                req = hostile[(k // args.hostile_every) % len(hostile)]
            else:
                req = normal[k % len(normal)]
            t0 = time.perf_counter()
            try:
                out = await req.send()
            except Exception as e:  # noqa: BLE001 - any failure of a request is counted, not fatal
                out = Outcome("client error", f"{type(e).__name__}: {e}")
            dt = time.perf_counter() - t0
            measured = block_kind(now)
            if measured is None or block_kind(time.monotonic()) != measured:
                continue  # warm-up, or straddles two blocks: not counted
            s = stats[measured][req.endpoint]
            s.server_errors += out.server_error
            if out.server_error:
                s.note(f"5xx: {out.problem}")
            if req.hostile:
                s.hostile += 1
                s.hostile_expected += out.problem is None
                if out.problem is not None and not out.server_error:
                    s.note(f"hostile request not answered as expected: {out.problem}")
            else:
                s.normal += 1
                if out.problem is None:
                    s.latencies.append(dt)
                else:
                    s.errors += 1
                    s.note(out.problem)

    def sample() -> dict[str, Any]:
        row: dict[str, Any] = {"t_s": round(time.monotonic() - t_measure, 1)}
        for pid in pids:
            own, total = tree_rss(pid)
            row[str(pid)] = (round(own / MiB, 1), round(total / MiB, 1))
        return row

    async def sampler() -> list[dict[str, Any]]:
        out = []
        await asyncio.sleep(max(0.0, t_measure - time.monotonic()))
        while time.monotonic() < t_end:
            out.append(sample())
            await asyncio.sleep(args.sample_every)
        return out

    samples_task = asyncio.create_task(sampler())
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    series = await samples_task
    await asyncio.sleep(1.0)  # quiet: burst workers retire, in-flight work settles
    series.append(sample())  # the last sample ("after") is taken with no load
    async with httpx.AsyncClient(timeout=10) as h:
        try:
            health = (await h.get(health_url)).status_code
        except httpx.HTTPError as e:
            health = f"{type(e).__name__}: {e}"
    seconds = n_blocks * args.block
    endpoints = {name: {kind: stats[kind][name].summary(seconds) for kind in stats} for name in stats["clean"]}
    ratios = {}
    for name, e in endpoints.items():
        if e["clean"]["requests"] and e["hostile"]["requests"] and e["clean"]["p99_ms"]:
            ratios[name] = round(e["hostile"]["p99_ms"] / e["clean"]["p99_ms"], 2)
    memory = {}
    for pid in pids:
        own = [row[str(pid)][0] for row in series if str(pid) in row]
        tree = [row[str(pid)][1] for row in series if str(pid) in row]
        memory[str(pid)] = {"t_s": [row["t_s"] for row in series], "rss_mib": own, "tree_rss_mib": tree,
                            "growth_mib": round(own[-1] - own[0], 1) if own else 0.0,
                            "tree_growth_mib": round(tree[-1] - tree[0], 1) if tree else 0.0,
                            "tree_max_mib": max(tree, default=0.0)}
    return {"seconds_each": seconds, "block_s": args.block, "concurrency": args.concurrency,
            "hostile_fraction": round(1 / args.hostile_every, 3) if args.hostile_every else 0.0,
            "endpoints": endpoints, "p99_ratio_hostile_vs_clean": ratios,
            "server_errors": sum(e[k]["server_errors"] for e in endpoints.values() for k in e),
            "memory": memory, "health_after": health}


async def run_service(name: str, url: str, grpc_target: str | None, pids: list[int], args) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        reqs = reward_requests(http, url, grpc_target) if name == "reward" else rollout_requests(http, url)
        return await drive(reqs, url + "/healthz", pids, args)


# ---------------------------------------------------------------------------------------------- output
def format_table(service: str, r: dict[str, Any], labels: dict[int, str]) -> str:
    lines = [f"### {service}: {r['concurrency']} concurrent clients, {r['seconds_each']} s clean + "
             f"{r['seconds_each']} s hostile ({r['hostile_fraction']:.0%} hostile requests) in alternating "
             f"{r['block_s']:g} s blocks; 5xx: {r['server_errors']}; healthz after: {r['health_after']}", "",
             "| endpoint | blocks | normal requests | errors | req/s | p50 ms | p95 ms | p99 ms | hostile answered "
             "as expected | 5xx |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in r["endpoints"].items():
        for kind, s in e.items():
            if not (s["requests"] or s["hostile"]):
                continue  # e.g. the hostile-only endpoint in clean blocks
            lines.append(f"| {name} | {kind} | {s['requests']} | {s['errors']} | {s['throughput_rps']} | "
                         f"{s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['hostile_expected']}/{s['hostile']} | "
                         f"{s['server_errors']} |")
    for name, ratio in r["p99_ratio_hostile_vs_clean"].items():
        lines.append(f"- {name}: p99 of normal requests, hostile blocks / clean blocks = **{ratio}**")
    for pid, m in r["memory"].items():
        lines.append(f"- {labels.get(int(pid), pid)}: RSS MiB over the run (every sample) {m['rss_mib']}; tree "
                     f"{m['tree_rss_mib']} (growth {m['growth_mib']:+} / tree {m['tree_growth_mib']:+})")
    for name, e in r["endpoints"].items():
        for kind, s in e.items():
            for sample in s["samples"]:
                lines.append(f"- {name} ({kind}): {sample}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--service", choices=["reward", "rollout", "both"], default="both")
    p.add_argument("--seconds", type=float, default=60.0, help="measured time of each kind of block, per service")
    p.add_argument("--block", type=float, default=10.0, help="length of one clean or hostile block")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    p.add_argument("--hostile-every", type=int, default=10, help="in hostile blocks every k-th request is hostile")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring starts")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--reward-url", help="use this running reward server (HTTP base URL) instead of starting one")
    p.add_argument("--reward-grpc", help="its gRPC host:port (with --reward-url)")
    p.add_argument("--rollout-url", help="use this running rollout server (HTTP base URL) instead of starting one")
    p.add_argument("--pid", type=int, action="append", default=[],
                   help="process whose RSS to sample when attaching to a running server (repeatable)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--log-dir", help="keep the started servers' logs (and the tiny checkpoint) here "
                                     "instead of a temporary folder")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.seconds <= 0 or args.block <= 0:
        p.error("--concurrency must be >= 1, --seconds and --block > 0")
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
                pids, labels = [proc.pid], {proc.pid: f"{name} server"}
            try:
                results[name] = asyncio.run(run_service(name, url, grpc_target, pids, args))
            finally:
                if proc is not None:
                    results.setdefault(name, {})["exit_code"] = _stop(proc)
            print(format_table(name, results[name], labels) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = any(r["server_errors"] or r["health_after"] != 200 or any(
        s["errors"] for e in r["endpoints"].values() for s in e.values()) for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
