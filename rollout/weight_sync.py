"""Weight transports from the learner into the rollout engines, besides the object store.

**Collective** (``rollout.weight_transport: collective``; gloo, so the same code runs on CPU in CI):
a :class:`WeightBroadcaster` actor on the learner's node (it maps the learner's published state dict
from the local object store without a copy) and the worker process of every rollout engine join one
process group of their own (:func:`join_group`: a ``TCPStore`` plus a ``ProcessGroupGloo`` made
directly, so vLLM's own default group in the worker process is untouched). Each update is broadcast
in fixed-size buckets (:func:`plan_buckets`; the sender casts to the engine's dtype into one bucket
buffer at a time, each receiver fills one new buffer per bucket, so the transport's own extra memory
is a bucket on each side; the receiver keeps the new weights until the swap, as every path must) and swapped in with the engine's usual prepare/pause/commit and version checks
(:mod:`rollout.weight_apply`, :mod:`rollout.weight_extension`). The fleet (:mod:`rollout.fleet`)
forms the group, re-forms it when its members change (a restarted worker, new engines, a resumed
learner) and sends an engine that cannot join, or whose receive failed, the same update through the
object store.

**vLLM's NCCL weight-transfer engine** (``weight_transport: nccl``, GPU only, not wired into the job):
the workers' engines are built with ``WeightTransferConfig(backend="nccl")`` and the learner's rank 0
broadcasts parameters straight from its GPU:

    client = RolloutSyncClient(workers)                       # pauses/resumes + versions
    sender = nccl_sender(client, module_or_source, master_address, master_port, tp_size)
    client.next_version = v; sender.send_weights()            # pause(keep) -> broadcast -> resume

:class:`RolloutSyncClient` implements vLLM's ``VLLMWeightSyncClient`` protocol on top of the
workers' ``nccl_*`` methods. Needs CUDA (tests are marked ``gpu``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
"""torch dtype name -> safetensors dtype name (the names a plan and ``WeightUpdate.specs`` use)."""


# ---------------------------------------------------------------------------------- collective
BACKENDS = ("gloo", "nccl")
"""Process-group backends of the weight group: gloo (tensors in host memory) or NCCL (on the GPUs)."""


def group_backend(engine_gpus: float, learner_device: str) -> str:
    """The weight group's backend: NCCL when the engines run on CUDA (``engine_gpus`` per worker > 0) and
    the sender beside learner rank 0 has a GPU too (buckets on the sender's and the engines' GPUs); gloo
    otherwise (buckets in host memory; the same code path, so CI runs it on CPU)."""
    return "nccl" if engine_gpus > 0 and learner_device == "cuda" else "gloo"


def group_device(backend: str, device=None):
    """Where this process keeps its buckets for ``backend`` (and makes it the thread's CUDA device): the
    given CUDA ``device`` (default: the current one) for NCCL, else the CPU."""
    import torch

    if backend != "nccl":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("the NCCL weight group needs CUDA in every member; this process sees no GPU")
    device = torch.device(device if device is not None else f"cuda:{torch.cuda.current_device()}")
    torch.cuda.set_device(device)  # CUDA's current device is per thread: the join/receive threads need it
    return device


def new_group(store, rank: int, world_size: int, timeout_s: float, backend: str = "gloo"):
    """A process group of our own over ``store`` (built directly, so the process's default group, e.g.
    vLLM's in its worker, is untouched): ``ProcessGroupGloo`` or ``ProcessGroupNCCL``."""
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()  # as torch.distributed.new_group builds one
        opts.is_high_priority_stream = False
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)
    if backend != "gloo":
        raise ValueError(f"weight group backend must be one of {BACKENDS}, got {backend!r}")
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


def _group_store(handle: dict, is_master: bool = False, store=None):
    """The ``PrefixStore`` of weight group ``handle["group"]`` (on the sender's ``TCPStore``)."""
    from datetime import timedelta

    import torch.distributed as dist

    if store is None:
        store = dist.TCPStore(handle["host"], handle["port"], None, is_master,
                              timeout=timedelta(seconds=float(handle["timeout_s"])), wait_for_workers=False)
    return dist.PrefixStore(f"flywheel-weights/{handle['group']}", store), store


def join_group(handle: dict, rank: int, dtype: str = ""):
    """Receiver side of joining weight group ``handle`` (from :meth:`WeightBroadcaster.open`) as ``rank``,
    in two phases so that one member that cannot join never stops the others: mark this rank arrived
    (with the engine's ``dtype``) in the sender's store, wait for the sender to name the members (the
    ranks that arrived in time), then build the process group at this rank's place among them (ranks
    are renumbered 1..n, the sender is 0). Raises if the sender left this rank out or never answered."""
    import json
    from datetime import timedelta

    timeout_s = float(handle["timeout_s"])
    prefix, _ = _group_store(handle)
    prefix.set(f"arrived/{rank}", dtype or "?")
    prefix.wait(["members"], timedelta(seconds=2 * timeout_s + 30))  # the sender waits timeout_s for arrivals
    members = json.loads(prefix.get("members"))
    if rank not in members:
        raise RuntimeError(f"left out of weight group {handle['group']} (arrived after the members were named)")
    return new_group(prefix, 1 + members.index(rank), 1 + len(members), timeout_s, handle.get("backend", "gloo"))


def broadcast(group, tensor) -> None:
    """Broadcast ``tensor`` from group rank 0 (in place on the other ranks)."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    group.broadcast([tensor], opts).wait()


def plan_buckets(specs: dict[str, tuple[list[int], str]], bucket_bytes: int) -> list[list[str]]:
    """Tensor names in broadcast order, cut into buckets of at most ``bucket_bytes`` of one dtype each
    (a tensor larger than a bucket travels alone)."""
    buckets: list[list[str]] = []
    used, dtype = 0, None
    for name, (shape, dt) in specs.items():
        n = _SIZE[dt] * _numel(shape)
        if not buckets or dt != dtype or used + n > bucket_bytes:
            buckets.append([])
            used, dtype = 0, dt
        buckets[-1].append(name)
        used += n
    return buckets


def receive_buckets(group, handle: dict, device=None):
    """Receiver side of one update: yields ``(name, tensor)`` bucket by bucket (each bucket one new
    flat buffer on ``device``, CPU by default, the yielded tensors are views of)."""
    import torch

    specs = handle["specs"]
    for names in handle["buckets"]:
        dtype = getattr(torch, _TORCH[specs[names[0]][1]])
        numels = [_numel(specs[n][0]) for n in names]
        buf = torch.empty(sum(numels), dtype=dtype, device=device)
        broadcast(group, buf)
        if buf.is_cuda:  # NCCL's wait() orders only this thread's stream; the consumer may use another
            torch.cuda.synchronize(buf.device)
        for name, part in zip(names, torch.split(buf, numels)):
            yield name, part.view(specs[name][0])


_TORCH = {v: k for k, v in DTYPES.items()}
_SIZE = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class WeightBroadcaster:
    """Rank 0 of the weight group: broadcasts the learner's published state dicts in buckets.

    A Ray actor (threaded: ``max_concurrency`` > 1, so a join or a broadcast does not block the rest)
    placed on the learner's node; ``tensors`` arguments are ObjectRefs Ray resolves from the local
    object store. Joining takes three calls: :meth:`open` (a fresh ``TCPStore``), :meth:`arrived`
    (polled: which receivers reached it, with their engines' dtypes), :meth:`join` (name the members,
    build the group)."""

    def __init__(self, bucket_mib: int = 64, join_timeout_s: float = 60.0, backend: str = "gloo") -> None:
        import uuid

        self.bucket_bytes = int(bucket_mib) << 20
        self.join_timeout_s = join_timeout_s
        self.backend = backend
        self.uid = uuid.uuid4().hex[:8]
        """Part of every group name: a new broadcaster's groups never match an old one's."""
        self.epoch = 0
        self._handle: dict[str, Any] | None = None
        self._prefix = self._store = self._group = None
        self._ranks: list[int] = []
        self._lock = threading.Lock()

    def open(self, ranks: list[int]) -> dict[str, Any]:
        """Start group ``epoch + 1`` for the receiver ``ranks``: returns the handle they join with
        (host, port, group name, epoch, timeout, backend)."""
        import ray

        self.close()
        self.epoch += 1
        self._ranks = sorted(ranks)
        handle = {"host": ray.util.get_node_ip_address(), "port": 0, "group": f"{self.uid}.{self.epoch}",
                  "epoch": self.epoch, "timeout_s": self.join_timeout_s, "backend": self.backend}
        self._prefix, self._store = _group_store(handle, is_master=True)
        self._handle = {**handle, "port": self._store.port}
        return dict(self._handle)

    def arrived(self, epoch: int) -> dict[int, str]:
        """Receiver ranks of group ``epoch`` that reached the store so far -> their engine's dtype."""
        if epoch != self.epoch or self._prefix is None:
            return {}
        return {r: self._prefix.get(f"arrived/{r}").decode() for r in self._ranks
                if self._prefix.check([f"arrived/{r}"])}

    def join(self, epoch: int, members: list[int]) -> bool:
        """Name the ``members`` of group ``epoch`` (receiver ranks; the others are left out) and join it
        as rank 0: returns once every member has joined, or raises on timeout."""
        import json

        if epoch != self.epoch or self._prefix is None:
            raise RuntimeError(f"weight group {epoch} is not the open one ({self.epoch})")
        members = sorted(members)
        self._prefix.set("members", json.dumps(members))
        self._group = new_group(self._prefix, 0, 1 + len(members), self.join_timeout_s, self.backend)
        return True

    def plan(self, tensors: dict, epoch: int, dtype: str | None = None) -> dict[str, Any]:
        """The handle of one broadcast of ``tensors`` (cast to ``dtype`` when given): names, shapes and
        dtypes (``specs``), the bucket order, the group, the bytes it moves."""
        specs = {}
        for name, t in tensors.items():
            dt = dtype or str(t.dtype).removeprefix("torch.")
            specs[name] = (list(t.shape), DTYPES[dt])
        buckets = plan_buckets(specs, self.bucket_bytes)
        nbytes = sum(_numel(s) * _SIZE[d] for s, d in specs.values())
        return {"epoch": epoch, "group": f"{self.uid}.{epoch}", "specs": specs, "buckets": buckets,
                "bytes": nbytes}

    def broadcast(self, tensors: dict, handle: dict) -> dict[str, float]:
        """Send one planned update bucket by bucket, each cast into a flat buffer (one at a time). Returns
        bytes moved, seconds and the peak extra bytes this side held (one bucket)."""
        import torch

        if self._group is None or handle["epoch"] != self.epoch:
            raise RuntimeError(f"weight group {handle['epoch']} is not joined (open: {self.epoch})")
        t0 = time.perf_counter()
        specs, peak, copy_s = handle["specs"], 0, 0.0
        device = group_device(self.backend)
        with self._lock, torch.no_grad():
            for names in handle["buckets"]:
                t1 = time.perf_counter()
                dtype = getattr(torch, _TORCH[specs[names[0]][1]])
                numels = [_numel(specs[n][0]) for n in names]
                buf = torch.empty(sum(numels), dtype=dtype, device=device)
                peak = max(peak, buf.numel() * buf.element_size())
                for name, part in zip(names, torch.split(buf, numels)):
                    part.copy_(tensors[name].reshape(-1))  # the dtype cast happens here, on the sender
                copy_s += time.perf_counter() - t1
                broadcast(self._group, buf)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        return {"bytes": float(handle["bytes"]), "seconds": seconds, "peak_extra_bytes": float(peak),
                "copy_s": copy_s, "wire_s": seconds - copy_s}

    def close(self) -> None:
        self._group = self._prefix = self._store = self._handle = None


class RolloutSyncClient:
    """vLLM ``VLLMWeightSyncClient`` over :class:`rollout.worker.RolloutWorker` actors."""

    def __init__(self, workers: list, version: int = 0) -> None:
        self.workers = list(workers)
        self.next_version = version + 1
        """Version the next ``start_weight_update`` / ``finish_weight_update`` pair installs."""
        self.records: list[list[dict]] = []

    def _all(self, method: str, *args) -> list[Any]:
        import ray

        return ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        # every worker joins the same group at its own rank offset (1 + i * tp_size)
        import ray

        refs = []
        for i, w in enumerate(self.workers):
            info = dict(init_info)
            info["rank_offset"] = init_info.get("rank_offset", 1) + i * init_info.get("tp_size", 1)
            info.pop("tp_size", None)
            refs.append(w.nccl_init.remote(info))
        ray.get(refs)

    def shutdown_weight_transfer_engine(self) -> None:
        pass

    def start_weight_update(self) -> None:
        self._all("nccl_begin", self.next_version)

    def update_weights(self, update_info) -> None:
        self._all("nccl_receive", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = int(weight_version) if weight_version is not None else self.next_version
        self.records.append(self._all("nccl_finish", version))
        self.next_version = version + 1


def nccl_sender(client: RolloutSyncClient, source, master_address: str, master_port: int,
                tp_size: int = 1, rank: int = 0):
    """Open the learner side of the NCCL group (rank 0 sends) and connect every worker to it.

    ``source`` is a ``torch.nn.Module`` (wrapped in vLLM's ``ModuleSource``; FSDP ``DTensor``
    parameters are gathered with ``full_tensor()``) or any vLLM ``WeightSource``.
    """
    import torch
    from vllm.distributed.weight_transfer.base import ModuleSource
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

    if not torch.cuda.is_available():
        raise RuntimeError("weight_transport = 'nccl' needs CUDA on the learner; none is visible")
    if isinstance(source, torch.nn.Module):
        source = ModuleSource(source)
    world_size = 1 + len(client.workers) * tp_size
    init = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port, world_size=world_size,
                               rank=rank)
    _patch_tp(client, tp_size)
    return NCCLTrainerWeightTransferEngine.trainer_init(init, client=client, source=source)


def _patch_tp(client: RolloutSyncClient, tp_size: int) -> None:
    """Make ``init_weight_transfer_engine`` space the workers' rank offsets by ``tp_size``."""
    orig = client.init_weight_transfer_engine

    def init(init_info: dict[str, Any]) -> None:
        orig({**init_info, "tp_size": tp_size})

    client.init_weight_transfer_engine = init  # type: ignore[method-assign]



@dataclass
class JoinResult:
    """One attempt to form the weight group (:func:`form_group`)."""

    members: list[int]
    """Workers that reached the rendezvous in time (the group was built with them)."""
    formed: bool
    """The group formed: every member and the sender joined."""
    why: dict[int, str] = field(default_factory=dict)
    """Worker -> why it is not a member, or why the group failed."""


def form_group(wanted: list[int], attempt: Callable[[list[int]], JoinResult]) -> tuple[list[int], dict[int, str]]:
    """Form the weight group from ``wanted`` workers so that each worker that cannot join is left out
    alone: returns (members, {worker: why} of those left out, who get the object store).

    ``attempt(workers)`` builds one group: a worker that does not reach the rendezvous in time is left
    out by the attempt itself (the others still form). If every member arrived and the group still
    did not form (a member whose process group breaks, e.g. a port the sender cannot reach), it is
    tried once more, then each member alone, then those that joined alone together. An attempt that
    raises (the sender cannot open a group) leaves every worker out, with that reason."""
    left_out: dict[int, str] = {}

    def run(workers: list[int]) -> JoinResult:
        try:
            res = attempt(workers)
        except Exception as e:  # noqa: BLE001 - the sender itself cannot: nobody gets a broadcast
            res = JoinResult([], False, {i: f"weight group sender: {type(e).__name__}: {e}" for i in workers})
        for i in workers:
            if i not in res.members:
                left_out[i] = res.why.get(i, "did not join the weight group")
        return res

    res = run(list(wanted))
    if not res.formed and res.members:
        res = run(res.members)  # once more, as it is: a transient failure
    if not res.formed and len(res.members) > 1:  # find the member(s) that break it: each alone, then together
        alone = []
        for i in res.members:
            solo = run([i])
            if solo.formed:
                alone.append(i)
            else:
                left_out[i] = solo.why.get(i, "the weight group did not form with it alone")
        res = run(alone) if alone else JoinResult([], False)
    if res.formed:
        return res.members, left_out
    for i in res.members:
        left_out[i] = res.why.get(i, "the weight group did not form")
    return [], left_out


class WeightGroup:
    """Driver side of the collective transport for a :class:`rollout.fleet.RolloutFleet`: the
    broadcaster actor, which workers are in the current group, and which ones get updates through the
    object store instead (with why). The group is (re-)formed lazily, at a publish whose up workers
    differ from its members: a restarted worker, another stage's engines or a resumed learner (a new
    fleet) simply join the next group. A worker that cannot join is left out alone (:func:`form_group`);
    the others get broadcasts."""

    def __init__(self, workers: list, ids: list[str], bucket_mib: int = 64, dtype: str | None = None,
                 ranks_per_worker: int = 1, broadcaster_options: dict | None = None,
                 join_timeout_s: float = 60.0, backend: str = "gloo") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"weight group backend must be one of {BACKENDS}, got {backend!r}")
        self.workers, self.ids = workers, ids
        self.bucket_mib, self.ranks_per_worker = bucket_mib, ranks_per_worker
        self.dtype = dtype
        """Dtype the weights travel in: the configured one, else the members' engine dtype."""
        self._configured_dtype = dtype
        self.join_timeout_s, self.backend = join_timeout_s, backend
        self._options = broadcaster_options or {}
        self.broadcaster = None
        self.epoch = 0
        self.members: list[int] = []
        self.fallback: dict[int, str] = {}
        """Worker index -> why it gets updates through the object store (cleared when it restarts)."""
        self.plan_s = 0.0

    def ready_members(self, up: list[int]) -> list[int]:
        """The up workers that will receive the next update by broadcast (forming the group if needed)."""
        wanted = [i for i in up if i not in self.fallback]
        if wanted and (not self.epoch or wanted != self.members):
            self._form(wanted)
        return list(self.members) if self.epoch else []

    def plan(self, tensors_ref, version: int) -> dict:
        import ray

        t0 = time.perf_counter()
        handle = ray.get(self.broadcaster.plan.remote(tensors_ref, self.epoch, self.dtype))
        self.plan_s = time.perf_counter() - t0
        """Seconds the last plan took (the sender fetching the state dict from the object store)."""
        return handle

    def broadcast(self, tensors_ref, handle: dict):
        return self.broadcaster.broadcast.remote(tensors_ref, handle)

    def broken(self, why: str, sender_dead: bool = False) -> None:
        """A broadcast failed: re-form the group at the next publish (with a new broadcaster if it died)."""
        if self.epoch:
            log.warning("weight group %d broken (%s); it is re-formed at the next update", self.epoch, why)
        self.epoch, self.members = 0, []
        if sender_dead:
            self.broadcaster = None

    def rejoined(self, i: int) -> None:
        """Worker ``i`` restarted: a fresh process gets a fresh chance to join."""
        self.fallback.pop(i, None)

    def _ranks(self, k: int) -> list[int]:
        """Receiver ranks of the ``k``-th worker of an attempt (one per tensor-parallel rank)."""
        return [1 + k * self.ranks_per_worker + t for t in range(self.ranks_per_worker)]

    def _attempt(self, workers: list[int]) -> JoinResult:
        """One group: open it, wait until every worker arrived (or failed, or ``join_timeout_s``), name
        the ones that arrived as members, wait for them and the broadcaster to join."""
        import ray

        if self.broadcaster is None:
            opts = {"num_cpus": 0, "max_concurrency": 4, **self._options}
            self.broadcaster = ray.remote(WeightBroadcaster).options(**opts).remote(
                self.bucket_mib, self.join_timeout_s, self.backend)
        ranks = {i: self._ranks(k) for k, i in enumerate(workers)}
        info = ray.get(self.broadcaster.open.remote([r for rs in ranks.values() for r in rs]), timeout=120)
        refs = {i: self.workers[i].join_collective.remote({**info, "rank": ranks[i][0]}) for i in workers}
        why: dict[int, str] = {}
        deadline = time.monotonic() + self.join_timeout_s
        while True:  # phase 1: arrivals (a join that ends now failed: it never waits for the members)
            arrived = ray.get(self.broadcaster.arrived.remote(info["epoch"]), timeout=60)
            for i, ref in refs.items():
                if i not in why and ray.wait([ref], timeout=0)[0]:
                    why[i] = _status(ref)
            present = [i for i in workers if i not in why and all(r in arrived for r in ranks[i])]
            if len(present) + len(why) == len(workers) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for i in workers:
            if i not in present:
                why.setdefault(i, f"did not reach the weight group's store within {self.join_timeout_s:.0f} s")
        if not present:
            return JoinResult([], False, why)
        dtypes = {arrived[r] for i in present for r in ranks[i]}
        root = self.broadcaster.join.remote(info["epoch"], [r for i in present for r in ranks[i]])
        failed = {i: st for i in present if (st := _status(refs[i], self.join_timeout_s + 60)) != "ok"}
        try:
            ray.get(root, timeout=self.join_timeout_s + 60)
        except Exception as e:  # noqa: BLE001 - then its members failed too
            failed.update({i: f"weight group sender: {type(e).__name__}: {e}" for i in present if i not in failed})
        if failed:
            return JoinResult(present, False, {**why, **failed})
        self.epoch, self.members = info["epoch"], list(present)
        if self._configured_dtype is None:  # send in the engines' own dtype (e.g. bfloat16 engines of fp32 weights)
            self.dtype = dtypes.pop() if len(dtypes) == 1 and "?" not in dtypes else None
        return JoinResult(present, True, why)

    def _form(self, wanted: list[int]) -> None:
        t0 = time.perf_counter()
        self.epoch, self.members = 0, []
        members, left_out = form_group(wanted, self._attempt)
        if not members:  # the last attempt failed (an earlier one may have formed a group of one)
            self.epoch, self.members = 0, []
        for i, why in left_out.items():
            self.fallback[i] = why
            log.warning("rollout worker %s cannot join the weight group (%s); it gets updates through the object "
                        "store", self.ids[i], why)
        if members:
            log.info("weight group %d: broadcaster + %d rollout worker(s) joined in %.1f s (%s, weights in %s)",
                     self.epoch, len(members), time.perf_counter() - t0, self.backend, self.dtype or "the learner's dtype")


def _status(ref, timeout: float | None = None) -> str:
    """A worker's ``join_collective`` answer: "ok", or why it could not join."""
    import ray

    try:
        return ray.get(ref, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - a dead or stuck worker cannot join either
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
