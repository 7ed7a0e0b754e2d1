"""GPU weight transport: NCCL broadcast from the learner into rollout workers (vLLM weight-transfer engine).

The CPU transport needs nothing here: the learner ``ray.put``s a ``{name: tensor}`` dict and calls
``RolloutWorker.load_weights(version, ref)`` (see :class:`rollout.router.RolloutRouter`). On GPUs
that would bounce every tensor through host memory, so with ``weight_transport = "nccl"`` the
workers' engines are built with ``WeightTransferConfig(backend="nccl")`` and the learner's rank 0
broadcasts parameters straight from its GPU:

    client = RolloutSyncClient(workers)                       # pauses/resumes + versions
    sender = nccl_sender(client, module_or_source, master_address, master_port, tp_size)
    client.next_version = v; sender.send_weights()            # pause(keep) -> broadcast -> resume

:class:`RolloutSyncClient` implements vLLM's ``VLLMWeightSyncClient`` protocol on top of the
workers' ``nccl_*`` methods, so vLLM's own ``NCCLTrainerWeightTransferEngine`` drives the handshake
while our workers keep requests in flight (``pause_generation(mode="keep")``) and relabel the
version that tags new tokens. Needs CUDA (tests are marked ``gpu``).
"""

from __future__ import annotations

from typing import Any


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
