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
from typing import Any

log = logging.getLogger(__name__)

DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
"""torch dtype name -> safetensors dtype name (the names a plan and ``WeightUpdate.specs`` use)."""


# ---------------------------------------------------------------------------------- collective
def join_group(host: str, port: int, rank: int, world_size: int, epoch: int, timeout_s: float = 60.0,
               store=None):
    """This process's member of the weight group ``epoch``: a gloo process group over the ``TCPStore`` at
    ``host:port`` (rank 0 passes the master ``store`` it opened). Blocks until every rank has joined."""
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout, wait_for_workers=False)
    return dist.ProcessGroupGloo(dist.PrefixStore(f"flywheel-weights/{epoch}", store), rank, world_size, timeout)


def broadcast(group, tensor) -> None:
    """Broadcast ``tensor`` from group rank 0 (in place on the other ranks)."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    group.broadcast([tensor], opts).wait()


def plan_buckets(specs: dict[str, tuple[list[int], str]], bucket_bytes: int) -> list[list[str]]:
    """Tensor names in broadcast order, cut into buckets of at most ``bucket_bytes`` of one dtype each
    (a tensor larger than a bucket travels alone)."""
    size = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2}
    buckets: list[list[str]] = []
    used, dtype = 0, None
    for name, (shape, dt) in specs.items():
        n = size[dt]
        for d in shape:
            n *= d
        if not buckets or dt != dtype or used + n > bucket_bytes:
            buckets.append([])
            used, dtype = 0, dt
        buckets[-1].append(name)
        used += n
    return buckets


def receive_buckets(group, handle: dict):
    """Receiver side of one update: yields ``(name, tensor)`` bucket by bucket (each bucket one new
    flat buffer the yielded tensors are views of)."""
    import torch

    specs = handle["specs"]
    for names in handle["buckets"]:
        dtype = getattr(torch, _TORCH[specs[names[0]][1]])
        numels = [_numel(specs[n][0]) for n in names]
        buf = torch.empty(sum(numels), dtype=dtype)
        broadcast(group, buf)
        for name, part in zip(names, torch.split(buf, numels)):
            yield name, part.view(specs[name][0])


_TORCH = {v: k for k, v in DTYPES.items()}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class WeightBroadcaster:
    """Rank 0 of the weight group: broadcasts the learner's published state dicts in buckets.

    A Ray actor (threaded: ``max_concurrency`` > 1, so a join or a broadcast does not block the rest)
    placed on the learner's node; ``tensors`` arguments are ObjectRefs Ray resolves from the local
    object store without a copy."""

    def __init__(self, bucket_mib: int = 64, join_timeout_s: float = 60.0) -> None:
        self.bucket_bytes = int(bucket_mib) << 20
        self.join_timeout_s = join_timeout_s
        self.epoch = 0
        self._store = None
        self._group = None
        self._world_size = 0
        self._lock = threading.Lock()

    def open(self, world_size: int) -> dict[str, Any]:
        """Start group ``epoch + 1`` for ``world_size`` ranks (this one included): returns the handle the
        receivers join with (host, port, epoch, world size)."""
        from datetime import timedelta

        import ray
        import torch.distributed as dist

        self.close()
        self.epoch += 1
        self._world_size = world_size
        host = ray.util.get_node_ip_address()
        self._store = dist.TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False,
                                    timeout=timedelta(seconds=self.join_timeout_s))
        return {"host": host, "port": self._store.port, "epoch": self.epoch, "world_size": world_size,
                "timeout_s": self.join_timeout_s}

    def join(self, epoch: int) -> bool:
        """Join group ``epoch`` as rank 0 (returns once every receiver has joined, or raises on timeout)."""
        if epoch != self.epoch or self._store is None:
            raise RuntimeError(f"weight group {epoch} is not the open one ({self.epoch})")
        self._group = join_group("", 0, 0, self._world_size, epoch, self.join_timeout_s, store=self._store)
        return True

    def plan(self, tensors: dict, epoch: int, dtype: str | None = None) -> dict[str, Any]:
        """The handle of one broadcast of ``tensors`` (cast to ``dtype`` when given): names, shapes and
        dtypes (``specs``), the bucket order, the group epoch, the bytes it moves."""
        specs = {}
        for name, t in tensors.items():
            dt = dtype or str(t.dtype).removeprefix("torch.")
            specs[name] = (list(t.shape), DTYPES[dt])
        buckets = plan_buckets(specs, self.bucket_bytes)
        size = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2}
        nbytes = sum(_numel(s) * size[d] for s, d in specs.values())
        return {"epoch": epoch, "specs": specs, "buckets": buckets, "bytes": nbytes}

    def broadcast(self, tensors: dict, handle: dict) -> dict[str, float]:
        """Send one planned update bucket by bucket, each cast into a flat buffer (one at a time). Returns
        bytes moved, seconds and the peak extra bytes this side held (one bucket)."""
        import torch

        if self._group is None or handle["epoch"] != self.epoch:
            raise RuntimeError(f"weight group {handle['epoch']} is not joined (open: {self.epoch})")
        t0 = time.perf_counter()
        specs, peak = handle["specs"], 0
        with self._lock, torch.no_grad():
            for names in handle["buckets"]:
                dtype = getattr(torch, _TORCH[specs[names[0]][1]])
                numels = [_numel(specs[n][0]) for n in names]
                buf = torch.empty(sum(numels), dtype=dtype)
                peak = max(peak, buf.numel() * buf.element_size())
                for name, part in zip(names, torch.split(buf, numels)):
                    part.copy_(tensors[name].reshape(-1))  # the dtype cast happens here, on the sender
                broadcast(self._group, buf)
        return {"bytes": float(handle["bytes"]), "seconds": time.perf_counter() - t0, "peak_extra_bytes": float(peak)}

    def close(self) -> None:
        self._group, self._store = None, None


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


class WeightGroup:
    """Driver side of the collective transport for a :class:`rollout.fleet.RolloutFleet`: the
    broadcaster actor, which workers are in the current group, and which ones get updates through the
    object store instead (with why). The group is (re-)formed lazily, at a publish whose up workers
    differ from its members: a restarted worker, another stage's engines or a resumed learner (a new
    fleet) simply join the next group."""

    JOIN_TRIES = 2

    def __init__(self, workers: list, ids: list[str], bucket_mib: int = 64, dtype: str | None = None,
                 ranks_per_worker: int = 1, broadcaster_options: dict | None = None,
                 join_timeout_s: float = 60.0) -> None:
        self.workers, self.ids = workers, ids
        self.bucket_mib, self.dtype, self.ranks_per_worker = bucket_mib, dtype, ranks_per_worker
        self.join_timeout_s = join_timeout_s
        self._options = broadcaster_options or {}
        self.broadcaster = None
        self.epoch = 0
        self.members: list[int] = []
        self.fallback: dict[int, str] = {}
        """Worker index -> why it gets updates through the object store (cleared when it restarts)."""

    def ready_members(self, up: list[int]) -> list[int]:
        """The up workers that will receive the next update by broadcast (forming the group if needed)."""
        wanted = [i for i in up if i not in self.fallback]
        if wanted and (not self.epoch or wanted != self.members):
            self._form(wanted)
        return list(self.members) if self.epoch else []

    def plan(self, tensors_ref, version: int) -> dict:
        import ray

        return ray.get(self.broadcaster.plan.remote(tensors_ref, self.epoch, self.dtype))

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

    def _form(self, wanted: list[int]) -> None:
        import ray

        if self.broadcaster is None:
            opts = {"num_cpus": 0, "max_concurrency": 4, **self._options}
            self.broadcaster = ray.remote(WeightBroadcaster).options(**opts).remote(
                self.bucket_mib, self.join_timeout_s)
        self.epoch, self.members = 0, []
        failed: dict[int, str] = {}
        for _ in range(self.JOIN_TRIES):
            t0 = time.perf_counter()
            info = ray.get(self.broadcaster.open.remote(1 + len(wanted) * self.ranks_per_worker))
            refs = {i: self.workers[i].join_collective.remote({**info, "rank": 1 + k * self.ranks_per_worker})
                    for k, i in enumerate(wanted)}
            root = self.broadcaster.join.remote(info["epoch"])
            failed = {}
            for i, ref in refs.items():
                try:
                    status = ray.get(ref, timeout=self.join_timeout_s + 60)
                except Exception as e:  # noqa: BLE001 - a dead or stuck worker cannot join either
                    status = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if status != "ok":
                    failed[i] = status
            try:
                ray.get(root, timeout=self.join_timeout_s + 60)
            except Exception as e:  # noqa: BLE001 - every member then failed too
                failed.setdefault(-1, f"broadcaster: {type(e).__name__}: {e}")
            if not failed:
                self.epoch, self.members = info["epoch"], list(wanted)
                log.info("weight group %d: broadcaster + %d rollout worker(s) joined in %.1f s (gloo)", self.epoch,
                         len(wanted), time.perf_counter() - t0)
                return
            log.warning("weight group %d did not form (%s); trying again", info["epoch"],
                        "; ".join(f"{self.ids[i] if i >= 0 else 'broadcaster'}: {why}" for i, why in failed.items()))
        for i, why in failed.items():
            if i >= 0:
                self.fallback[i] = why
                log.warning("rollout worker %s cannot join the weight group (%s); it gets updates through the "
                            "object store", self.ids[i], why)
        if -1 in failed:  # the sender itself cannot: everyone uses the object store
            for i in wanted:
                self.fallback.setdefault(i, failed[-1])
        rest = [i for i in wanted if i not in self.fallback]
        if rest:
            self._form(rest)
