"""Weight transports from the learner into the rollout engines, besides the object store.

**Collective** (``rollout.weight_transport: collective``, or ``nccl``, its GPU spelling): a
:class:`WeightBroadcaster` actor on the learner's node and the worker process of every rollout engine
join one process group of their own: a ``TCPStore`` opened by the sender plus a process group built
directly in each process (:func:`new_group`), so vLLM's own default group in the worker is untouched.
The backend follows the device (:func:`group_backend`): NCCL with the buckets on the GPUs when the
engines and the learner run on CUDA, gloo with the buckets in host memory otherwise, one code path
(CI runs it on CPU). Joining is two-phase (:func:`join_group`: arrive, be named a member, build the
group), so a receiver that cannot join never stops the others (:mod:`rollout.weight_group` forms the
group and sends the left-out ones the object store).

Per update the sender fetches the learner's published state dict from its node's object store once
(:meth:`WeightBroadcaster.plan`), then broadcasts it in buckets of one dtype (:func:`plan_buckets`), cast
to the engines' dtype into two reused flat buffers, the next one filled while the previous one travels
(:data:`IN_FLIGHT`; a tensor of :data:`ALONE_BYTES` or more already in the wire dtype goes as it is). Each receiver receives
straight into one new buffer per bucket, the next bucket posted before the current one is handed on
(:func:`receive_buckets`), and the engine swaps the update in with its usual prepare/pause/commit and
version checks (:mod:`rollout.weight_apply`, :mod:`rollout.weight_extension`).

**vLLM's NCCL weight-transfer engine** (GPU only, not used by the job): the workers' engines are built
with ``WeightTransferConfig(backend="nccl")`` (``weight_transport: nccl``) and a learner-side process
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


IN_FLIGHT = 2
"""Buckets on the wire at once, on each side: the next one is filled (sender) or posted (receiver) while
one travels, so the transport's own extra memory stays two buckets."""


def start_broadcast(group, tensor):
    """Start broadcasting ``tensor`` from group rank 0 (in place on the other ranks); returns the work."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    return group.broadcast([tensor], opts)


ALONE_BYTES = 1 << 20
"""A tensor of at least this many bytes that is already in the wire dtype travels alone, as it is (no copy
into a bucket); smaller ones are packed, so a model of many small tensors is not many small broadcasts."""


def plan_buckets(specs: dict[str, tuple[list[int], str]], bucket_bytes: int,
                 alone: set[str] | frozenset = frozenset()) -> list[list[str]]:
    """Tensor names in broadcast order, cut into buckets of at most ``bucket_bytes`` of one dtype each
    (a tensor larger than a bucket, or named in ``alone``, travels alone)."""
    buckets: list[list[str]] = []
    used, dtype = 0, None
    for name, (shape, dt) in specs.items():
        n = _SIZE[dt] * _numel(shape)
        if name in alone:
            buckets.append([name])
            used, dtype = bucket_bytes, dt  # full: the next tensor starts a bucket of its own
            continue
        if not buckets or dt != dtype or used + n > bucket_bytes:
            buckets.append([])
            used, dtype = 0, dt
        buckets[-1].append(name)
        used += n
    return buckets


def receive_buckets(group, handle: dict, device=None):
    """Receiver side of one update: yields ``(name, tensor)`` bucket by bucket, each bucket one new flat
    buffer on ``device`` (CPU by default) that the yielded tensors are views of, received straight into
    it. The next bucket is already on its way while one is handed on (:data:`IN_FLIGHT`)."""
    from collections import deque

    import torch

    specs = handle["specs"]
    todo = iter(handle["buckets"])
    pending: deque = deque()

    def post() -> None:
        names = next(todo, None)
        if names is not None:
            numels = [_numel(specs[n][0]) for n in names]
            buf = torch.empty(sum(numels), dtype=getattr(torch, _TORCH[specs[names[0]][1]]), device=device)
            pending.append((names, numels, buf, start_broadcast(group, buf)))

    for _ in range(IN_FLIGHT):
        post()
    while pending:
        names, numels, buf, work = pending.popleft()
        work.wait()
        if buf.is_cuda:  # NCCL's wait() orders only this thread's stream; the consumer may use another
            torch.cuda.synchronize(buf.device)
        post()
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

    def __init__(self, bucket_mib: int = 64, join_timeout_s: float = 60.0, backend: str = "gloo",
                 host: str | None = None) -> None:
        import uuid

        self.bucket_bytes = int(bucket_mib) << 20
        self.join_timeout_s = join_timeout_s
        self.backend = backend
        self.host = host
        """Address the receivers reach this sender's store at (default: this Ray node's)."""
        self.uid = uuid.uuid4().hex[:8]
        """Part of every group name: a new broadcaster's groups never match an old one's."""
        self.epoch = 0
        self._handle: dict[str, Any] | None = None
        self._prefix = self._store = self._group = None
        self._ranks: list[int] = []
        self._lock = threading.Lock()
        self._planned = 0
        self._pending: tuple[int, dict] | None = None
        """(update number, tensors) of the last plan, until its broadcast."""

    def open(self, ranks: list[int]) -> dict[str, Any]:
        """Start group ``epoch + 1`` for the receiver ``ranks``: returns the handle they join with
        (host, port, group name, epoch, timeout, backend)."""
        self.close()
        self.epoch += 1
        self._ranks = sorted(ranks)
        if self.host is None:
            import ray

            self.host = ray.util.get_node_ip_address()
        handle = {"host": self.host, "port": 0, "group": f"{self.uid}.{self.epoch}",
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
        dtypes (``specs``), the bucket order, the group, the bytes it moves. Keeps ``tensors`` (fetched
        from the object store once) for the :meth:`broadcast` of this handle."""
        specs, alone = {}, set()
        for name, t in tensors.items():
            dt = dtype or str(t.dtype).removeprefix("torch.")
            specs[name] = (list(t.shape), DTYPES[dt])
            if str(t.dtype) == f"torch.{dt}" and t.is_contiguous() and t.numel() * t.element_size() >= ALONE_BYTES:
                alone.add(name)
        buckets = plan_buckets(specs, self.bucket_bytes, alone)
        nbytes = sum(_numel(s) * _SIZE[d] for s, d in specs.values())
        self._planned += 1
        handle = {"epoch": epoch, "group": f"{self.uid}.{epoch}", "update": self._planned, "specs": specs,
                  "buckets": buckets, "bytes": nbytes}
        self._pending = (self._planned, tensors)  # one update at a time: a newer plan drops an unsent one
        return handle

    def broadcast(self, handle: dict) -> dict[str, float]:
        """Send the planned update bucket by bucket: each is cast into one of :data:`IN_FLIGHT` reused flat
        buffers while the one before travels (a lone tensor already in the wire dtype goes as it is).
        Returns bytes moved, seconds (``copy_s`` of them filling buckets), the peak extra bytes held."""
        from collections import deque

        import torch

        if self._group is None or handle["epoch"] != self.epoch:
            raise RuntimeError(f"weight group {handle['epoch']} is not joined (open: {self.epoch})")
        if self._pending is None or self._pending[0] != handle["update"]:
            raise RuntimeError(f"update {handle['update']} was not the last one planned")
        tensors, self._pending = self._pending[1], None
        t0 = time.perf_counter()
        specs, copy_s = handle["specs"], 0.0
        device = group_device(self.backend)
        dtypes = [getattr(torch, _TORCH[specs[names[0]][1]]) for names in handle["buckets"]]
        sizes = [sum(_numel(specs[n][0]) for n in names) * _SIZE[specs[names[0]][1]] for names in handle["buckets"]]
        as_is = [len(names) == 1 and (t := tensors[names[0]]).dtype == dt and t.device == device and t.is_contiguous()
                 for names, dt in zip(handle["buckets"], dtypes)]
        packed = max((n for n, direct in zip(sizes, as_is) if not direct), default=0)
        raws: list = [None] * IN_FLIGHT  # byte buffers, allocated on first use, reused for every bucket
        works: deque = deque()
        with self._lock, torch.no_grad():
            for k, names in enumerate(handle["buckets"]):
                if len(works) == IN_FLIGHT:
                    works.popleft().wait()  # bucket k - 2 has left: its buffer is free again
                t1 = time.perf_counter()
                dtype = dtypes[k]
                if as_is[k]:
                    buf = tensors[names[0]].reshape(-1)
                else:
                    if raws[k % IN_FLIGHT] is None:
                        raws[k % IN_FLIGHT] = torch.empty(packed, dtype=torch.uint8, device=device)
                    buf = raws[k % IN_FLIGHT][: sizes[k]].view(dtype)
                    numels = [_numel(specs[n][0]) for n in names]
                    for name, part in zip(names, torch.split(buf, numels)):
                        part.copy_(tensors[name].reshape(-1))  # the dtype cast happens here, on the sender
                copy_s += time.perf_counter() - t1
                works.append(start_broadcast(self._group, buf))
            while works:
                works.popleft().wait()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        peak = sum(r.numel() for r in raws if r is not None)
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
