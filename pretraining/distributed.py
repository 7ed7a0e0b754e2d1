"""Multi-process training with FSDP2 (``fully_shard``): gloo on CPU with an explicit CPU mesh, NCCL on GPU.

Launch with ``torchrun --nproc-per-node N -m services.cli pretrain ...``. A single process on a machine
with a GPU trains there as a 1-rank NCCL group (bf16 compute, fp32 master weights); a single process
without one (the CPU default) never touches ``torch.distributed``. Each rank takes every ``world_size``-th row of a global
batch; the trainer normalises the loss by the global target count, so N ranks match one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pretraining.config import DistributedConfig


@dataclass
class Dist:
    rank: int
    world_size: int
    device: str
    mesh: Any
    bf16: bool = False
    """Shard with a bf16 ``MixedPrecisionPolicy`` (GPU only)."""

    def barrier(self) -> None:
        import torch.distributed as td

        td.barrier()

    def shard(self, rows: list) -> list:
        """This rank's share of a global list of rows."""
        return rows[self.rank::self.world_size]


def init_distributed(cfg: DistributedConfig) -> Dist | None:
    """A :class:`Dist` when FSDP is on (``fsdp: on``, or ``auto`` with WORLD_SIZE > 1 or a visible GPU), else
    None (one process on the CPU)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if cfg.fsdp == "off" or (cfg.fsdp == "auto" and world == 1 and not cuda):
        if world > 1:
            raise ValueError(f"WORLD_SIZE={world} but distributed.fsdp=off: multi-process training needs FSDP")
        return None
    import torch.distributed as td
    from torch.distributed.device_mesh import init_device_mesh

    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cuda else "gloo")
    if not td.is_initialized():
        if "MASTER_ADDR" in os.environ:  # torchrun
            td.init_process_group(backend)
        else:  # one process, not launched by torchrun: a 1-rank group on a free loopback port
            from torch.distributed.elastic.utils.distributed import get_free_port

            td.init_process_group(backend, init_method=f"tcp://127.0.0.1:{get_free_port()}", rank=0, world_size=1)
    rank, world = td.get_rank(), td.get_world_size()
    device = "cpu"
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    mesh = init_device_mesh("cuda" if backend == "nccl" else "cpu", (world,))  # explicit CPU mesh for gloo
    return Dist(rank, world, device, mesh, bf16=backend == "nccl" and cfg.mixed_precision)


def decoder_blocks(model) -> list:
    """The modules to shard one by one: HF's ``_no_split_modules`` classes (the decoder layers)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__}: found no decoder blocks to shard (_no_split_modules={names})")
    return blocks


def shard_blocks(model, mesh, bf16: bool = False):
    """``fully_shard`` every decoder block, then the root (embeddings, final norm, tied head); with
    ``bf16`` the blocks compute in bf16 while parameters, optimizer state and reductions stay fp32."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if bf16:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def shard_model(model, dist: Dist):
    """:func:`shard_blocks` on ``dist``'s device and mesh."""
    model.to(dist.device)
    return shard_blocks(model, dist.mesh, dist.bf16)


def full_state_dict(model) -> dict:
    """The unsharded state dict on CPU (collective: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer state with unsharded tensors keyed by parameter name, on rank 0's CPU (``{}`` on the
    other ranks). Collective: every rank must call it. Parameter names instead of ids make the state
    independent of the world size, so a run saved with N ranks resumes with M."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model, optimizer, model_state: dict, optim_state: dict) -> None:
    """Load full (unsharded) model and optimizer state into a sharded model and its optimizer.

    Every rank passes the whole state (each reads the same checkpoint folder) and keeps its own shard.
    A tied ``lm_head.weight`` absent from the safetensors file is filled from the embeddings. Collective.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from pretraining.checkpoint import fill_tied_head

    model_state = fill_tied_head(dict(model_state), model.config)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True, strict=True))


def close_distributed(dist: Dist | None) -> None:
    if dist is not None:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
