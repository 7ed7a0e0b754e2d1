"""Benchmark: weight updates through the Ray object store vs the collective (gloo broadcast) transport.

    python bench/weight_sync.py                      # tiny model and a ~100M-parameter random Qwen3
    python bench/weight_sync.py --sizes tiny --updates 3
    python bench/weight_sync.py --sizes 100m --dtype bfloat16   # bf16 engines: collective sends bf16

For each model: one real vLLM CPU rollout worker generating continuously (requests in flight), and
the same weights published ``--updates`` times through each transport by a :class:`rollout.fleet.RolloutFleet`
(the learner's side is a ``ray.put`` of the state dict on the same node, as the learner's
``publish_weights`` leaves it). Per update: seconds to hand over (publish -> every worker applied it),
the generation stall (client-side pause window, and the model's idle gap measured in the engine), and
the peak extra memory while the update is in flight: on the sender side (RSS of the broadcaster above
its level before the update: the object-store pages of the state dict it reads, which it maps rather
than copies, plus its bucket; the object store path has no sender process: the state dict sits in the
store for both transports) and on the receiver side (RSS of the worker actor and its vLLM engine
process above their level before the update, plus this benchmark's ``/dev/shm`` staging files),
sampled every 5 ms. RSS growth understates steady-state use: memory the allocator kept from the previous
update is already in the level before the next one, so the first update of each transport (printed per
update) is the cold figure. Prints one table per model with the collective / object store ratios of the same
run, then a profile of where the hand-over goes (the worker fetching the state dict and staging it in
``/dev/shm``; the sender fetching it and filling buckets, and the time its broadcast waits on the wire;
the engine receiving and preparing the update). Numbers from a shared or loaded machine say so: the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is first on sys.path and bench/rollout.py would shadow the rollout package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

SIZES = {"tiny": {}, "100m": {"hidden_size": 768, "num_layers": 17, "num_heads": 12}}
"""Model shapes (``tests.fixtures.tiny_checkpoint.build_tiny_qwen3`` arguments); 100m: ~101M parameters."""


class MemorySampler:
    """Peak RSS above a baseline of a set of processes (and ``/dev/shm`` use), sampled in a thread."""

    def __init__(self, pids: list[int], shm: bool = True) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.shm = shm
        self.base = self._now()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> int:
        rss = 0
        for p in self.procs:
            try:
                rss += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a process that went away holds nothing
                pass
        shm = 0
        if self.shm and os.path.isdir("/dev/shm"):  # this benchmark's staging files (the workers are named bench-*)
            for e in os.scandir("/dev/shm"):
                if e.name.startswith("flywheel-bench-"):
                    try:
                        shm += e.stat().st_size
                    except FileNotFoundError:
                        pass
        return rss + shm

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now() - self.base)
            time.sleep(0.005)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def worker_pids(worker) -> list[int]:
    """The rollout worker actor's pid and its children's (the vLLM engine core process)."""
    import psutil
    import ray

    pid = ray.get(worker.health.remote())["pid"]
    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def run_transport(fleet, worker, weights_ref, start_version: int, updates: int, sender_pids) -> list[dict]:
    """``updates`` publishes of ``weights_ref`` through ``fleet``; one measurement dict per update."""
    import ray

    from rollout.weight_update import WeightUpdate

    out = []
    for k in range(updates):
        version = start_version + k
        rx_pids = worker_pids(worker)
        senders = sender_pids()
        with MemorySampler(rx_pids) as rx, MemorySampler(senders, shm=False) as tx:
            t0 = time.perf_counter()
            fleet.publish(WeightUpdate(version, tensors=weights_ref), wait=True)
            handover = time.perf_counter() - t0
        time.sleep(1.0)  # the engine fills idle_s once the step after the update has started
        rec = ray.get(worker.stats.remote())["syncs"][-1]
        assert rec["version"] == version, rec
        lp = fleet.last_publish
        out.append({"handover_s": handover, "stall_s": rec["stall_s"], "idle_s": rec["idle_s"],
                    "rx_peak_bytes": rx.peak, "tx_peak_bytes": tx.peak if senders else None,
                    "transport": lp.get("transport"), "bytes": lp.get("bytes"),
                    # where the hand-over time goes (profile): sender side, then the worker / engine side
                    "plan_s": lp.get("sender_plan_s"), "copy_s": lp.get("sender_copy_s"),
                    "wire_s": lp.get("sender_wire_s"), "fetch_s": lp.get("fetch_s"), "stage_s": rec.get("stage_s"),
                    "receive_s": rec.get("receive_s"), "prepare_thread_s": rec.get("prepare_thread_s"),
                    "before_pause_s": rec.get("prepare_s"), "worker_s": lp.get("handover_s")})
    return out


def bench_model(size: str, workdir: Path, updates: int, max_tokens: int, dtype: str = "float32",
                bucket_mib: int = 64) -> dict[str, list[dict]]:
    import ray
    import torch

    from rollout.config import RolloutConfig
    from rollout.fleet import RolloutFleet
    from rollout.prompts import GroupSink, create_prompt_source
    from rollout.worker import create_workers
    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3, perturbed_state_dict

    model = workdir / f"qwen3-{size}"
    if not (model / "config.json").is_file():
        build_tiny_qwen3(model, **SIZES[size])
    weights = perturbed_state_dict(model, scale=0.01, seed=5)
    params = sum(t.numel() for t in weights.values())
    cfg = RolloutConfig(model=str(model), dtype=dtype, max_model_len=512, kv_cache_gib=1, max_in_flight=4,
                        num_cpus_per_worker=1, worker_restarts=0)
    [worker] = create_workers(cfg, name_prefix=f"bench-{size}")
    ref = ray.put(weights)
    del weights
    prompts = [{"prompt_id": f"p{i}", "prompt_token_ids": [5 + i % 50, 17, 30 + i % 40]} for i in range(100_000)]
    source = create_prompt_source(prompts)
    sink = ray.remote(GroupSink).options(num_cpus=0).remote()
    ray.get(worker.start_continuous.remote(source, sink, {"n": 2, "max_tokens": max_tokens}, 4))
    results: dict[str, list[dict]] = {}
    try:
        version = ray.get(worker.get_version.remote()) + 1
        for transport in ("object_store", "collective"):
            fleet = RolloutFleet([worker], transport=transport, collective={"bucket_mib": bucket_mib})

            def sender_pids(fleet=fleet) -> list[int]:
                group = fleet.weight_group
                if group is None or group.broadcaster is None:
                    return []
                return [ray.get(group.broadcaster.__ray_call__.remote(lambda self: os.getpid()))]

            # the collective group forms first (joining is a one-off, not a per-update cost), and the state dict
            # is published in the engine's dtype, as the job's learner does (the object store gets it as it is)
            wire = fleet.wire_dtype()
            published = ref if wire in (None, "float32") else ray.put({k: v.to(getattr(torch, wire)) for k, v in
                                                                       ray.get(ref).items()})
            results[transport] = run_transport(fleet, worker, published, version, updates, sender_pids)
            del published
            version += updates
    finally:
        ray.get(worker.stop_continuous.remote())
        ray.kill(worker)
    print(f"\n{size}: {params / 1e6:.1f}M parameters ({params * 4 / 2**20:.0f} MiB float32), engine {dtype}, "
          f"buckets of {bucket_mib} MiB, {updates} updates per transport while generating")
    return results


def report(size: str, results: dict[str, list[dict]]) -> None:
    def med(rows: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    keys = [("handover_s", "s / update (hand-over)", 1.0), ("stall_s", "stall, pause window (ms)", 1e3),
            ("idle_s", "stall, model idle gap (ms)", 1e3), ("rx_peak_bytes", "peak extra memory, receiver (MiB)",
                                                            2**-20),
            ("tx_peak_bytes", "peak extra memory, sender (MiB)", 2**-20),
            ("fetch_s", "profile: worker fetches the state dict (s)", 1.0),
            ("stage_s", "profile: worker writes it to /dev/shm (s)", 1.0),
            ("plan_s", "profile: sender fetches it and plans buckets (s)", 1.0),
            ("copy_s", "profile: sender fills buckets (cast/copy) (s)", 1.0),
            ("wire_s", "profile: sender waits on the broadcast (s)", 1.0),
            ("receive_s", "profile: engine reads the file / receives (s)", 1.0),
            ("prepare_thread_s", "profile: engine prepares the update, reading included (s)", 1.0),
            ("before_pause_s", "profile: worker, update arrived to pause (s)", 1.0),
            ("worker_s", "profile: worker, call arrived to generating with it (s)", 1.0)]
    print(f"| {size} (median) | object store | collective | collective / object store |")
    print("| --- | --- | --- | --- |")
    for key, label, scale in keys:
        a, b = med(results["object_store"], key), med(results["collective"], key)
        fa = "-" if a is None else f"{a * scale:.3f}"
        fb = "-" if b is None else f"{b * scale:.3f}"
        ratio = f"{b / a:.2f}x" if a and b is not None else "-"
        print(f"| {label} | {fa} | {fb} | {ratio} |")
    for transport, rows in results.items():
        print(f"{size} {transport}: hand-over per update (s) {[round(r['handover_s'], 3) for r in rows]}, "
              f"receiver peak extra (MiB) {[round(r['rx_peak_bytes'] / 2**20) for r in rows]}, "
              f"{rows[0]['bytes'] / 2**20:.0f} MiB received per update")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--updates", type=int, default=5, help="updates per transport and model")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per sample of the background generation")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the engine's dtype (the published state dict is float32; collective sends the engine's)")
    ap.add_argument("--bucket-mib", type=int, default=64, help="collective: MiB per broadcast bucket")
    ap.add_argument("--copy", action="store_true",
                    help="publish without Ray's zero-copy torch tensors: readers unpickle a copy of every tensor (the "
                         "learner publishes with RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1, so readers map the state dict)")
    ap.add_argument("--workdir", default="/tmp/flywheel-bench-weight-sync", help="where the models are written")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not args.copy:  # read by Ray at import, in the process that puts the state dict (here: this one)
        os.environ["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] = env["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] = "1"
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}; zero-copy torch tensors: {not args.copy}")
    all_results = {size: bench_model(size, workdir, args.updates, args.max_tokens, args.dtype, args.bucket_mib)
                   for size in args.sizes}
    print(f"\nload average after: {os.getloadavg()} (numbers from a loaded machine are inflated)")
    for size, res in all_results.items():
        report(size, res)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
