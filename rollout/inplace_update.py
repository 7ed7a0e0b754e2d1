"""Prepare-then-swap weight updates for a vLLM CPU model, so generation stops only for the swap.

vLLM's ``model_runner.reload_weights`` does everything while the engine is paused: it moves every
layer to the meta device, re-runs the checkpoint loader and then each layer's
``process_weights_after_loading``, which on CPU repacks every linear weight into a new oneDNN
handle (``dispatch_cpu_unquantized_gemm``; the packed handle is the only copy of a linear weight,
``layer.weight`` is left empty). On the tiny test model that is 30-100 ms of Python and oneDNN
primitive creation, all of it a generation stall.

Here the same work is split in two:

- :func:`prepare_update` (no engine pause needed; runs in a background thread of the worker
  process while the engine keeps stepping): map checkpoint names to vLLM's parameters (stacked
  ``q/k/v`` -> ``qkv_proj``, ``gate/up`` -> ``gate_up_proj``, via the model's own
  ``hf_to_vllm_mapper`` or ``packed_modules_mapping``), convert dtype, check every shape, and build
  the new packed GEMM handles with vLLM's own ``dispatch_cpu_unquantized_gemm`` applied to a
  stand-in module holding the new weight;
- :meth:`PreparedUpdate.commit` (while the engine is paused between two steps): ``copy_`` into
  the parameters that keep their storage (norms, embeddings, biases) and point each linear layer
  at its new GEMM handle. Nothing is allocated and nothing can fail half-way on a shape.

A module that owns a changed parameter gets a new handle, so a tied ``lm_head`` (whose parameter
is ``embed_tokens.weight``) is repacked too; vLLM's reload misses that case in float32.

Only the plain CPU case is handled (tensor parallel 1, unquantized linear and embedding layers, no
LoRA); :func:`prepare_update` raises :class:`UnsupportedUpdate` otherwise and the caller falls back
to ``reload_weights``. Runs inside vLLM's worker process; imports vLLM lazily.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

_SHARD_ORDER = {"q": 0, "k": 1, "v": 2}
_QUANT_METHODS = ("UnquantizedLinearMethod", "UnquantizedEmbeddingMethod")


class UnsupportedUpdate(RuntimeError):
    """The model or update is outside what the prepare-then-swap path handles; use ``reload_weights``."""


@dataclass
class PreparedUpdate:
    """Everything a commit needs, built before the pause."""

    copies: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    """(live parameter, new value of the same shape and dtype)."""
    gemms: list[tuple[torch.nn.Module, Callable]] = field(default_factory=list)
    """(live layer, its new ``cpu_linear``)."""
    tensors: int = 0
    """Checkpoint tensors in the update."""

    @torch.no_grad()
    def commit(self) -> None:
        """Install the update (engine paused): in-place copies plus one attribute swap per layer."""
        for live, new in self.copies:
            live.copy_(new)
        for layer, gemm in self.gemms:
            layer.cpu_linear = gemm


def _shard_key(shard) -> int:
    return _SHARD_ORDER[shard] if isinstance(shard, str) else int(shard)


def _target_name(model: torch.nn.Module, name: str) -> tuple[str, object]:
    """Checkpoint name -> (vLLM parameter name, shard id or None)."""
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    if mapper is not None:
        if not hasattr(mapper, "_map_name_with_shard"):
            raise UnsupportedUpdate("this vLLM's WeightsMapper has no _map_name_with_shard")
        mapped = mapper._map_name_with_shard(name)
        if mapped is None:
            raise UnsupportedUpdate(f"{name!r} is dropped by the model's name mapper")
        target, shard = mapped
        if isinstance(shard, (list, tuple)):
            raise UnsupportedUpdate(f"{name!r} loads into several shards")
        if shard is not None:
            return target, shard
        name = target
    for packed, parts in (getattr(model, "packed_modules_mapping", None) or {}).items():
        for i, part in enumerate(parts):
            if part != packed and re.search(rf"\.{re.escape(part)}\.", name):
                return name.replace(f".{part}.", f".{packed}.", 1), i
    return name, None


def _stacked(name: str, shards: dict, layer: torch.nn.Module) -> torch.Tensor:
    """Concatenate q/k/v (or gate/up) along the output dim after checking each part's size."""
    parts = [shards[k] for k in sorted(shards, key=_shard_key)]
    sizes = getattr(layer, "output_partition_sizes", None) or getattr(layer, "output_sizes", None)
    if sizes is None or len(sizes) != len(parts) or [p.shape[0] for p in parts] != list(sizes):
        raise UnsupportedUpdate(f"{name}: shards {[tuple(p.shape) for p in parts]} do not match output sizes "
                                f"{sizes}")
    return torch.cat(parts, dim=0)


def prepare_update(model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                   tp_size: int = 1, lora: bool = False) -> PreparedUpdate:
    """Build a :class:`PreparedUpdate` for ``model`` from checkpoint-format ``(name, tensor)`` pairs."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or tp_size != 1 or lora:
        raise UnsupportedUpdate("prepare-then-swap handles CPU, tensor parallel 1, no LoRA only")
    params = dict(model.named_parameters(remove_duplicate=False))
    canonical = {id(p): n for n, p in model.named_parameters()}  # a tied parameter's first name
    owners: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((module, pname))

    # 1) checkpoint names -> one full new value per live parameter (stacked shards concatenated)
    plain: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict] = {}
    count = 0
    for name, tensor in weights:
        count += 1
        target, shard = _target_name(model, name)
        if target not in params:
            raise UnsupportedUpdate(f"{name!r} maps to {target!r}, which the model does not have")
        if shard is None:
            plain[target] = tensor
        else:
            stacked.setdefault(target, {})[shard] = tensor
    new_values: dict[int, tuple[str, torch.Tensor]] = {}
    for target, tensor in plain.items():
        pid = id(params[target])
        if pid not in new_values or target == canonical[pid]:  # tied: like vLLM, embed_tokens wins
            new_values[pid] = (target, tensor)
    for target, shards in stacked.items():
        layer = owners[id(params[target])][0][0]
        new_values[id(params[target])] = (target, _stacked(target, shards, layer))

    # 2) per parameter: in-place copy and/or a new GEMM handle for every layer that owns it
    out = PreparedUpdate(tensors=count)
    for pid, (target, value) in new_values.items():
        live = params[target]
        value = value.to(dtype=live.dtype).contiguous()
        for layer, pname in owners[pid]:
            if pname == "weight" and hasattr(layer, "cpu_linear"):
                method = type(getattr(layer, "quant_method", None)).__name__
                if method not in _QUANT_METHODS:
                    raise UnsupportedUpdate(f"{target}: layer with quant method {method}")
                value = _padded(target, value, layer)
                _check_linear_shape(target, value, layer)
                shim = torch.nn.Module()
                shim.weight = torch.nn.Parameter(value, requires_grad=False)
                dispatch_cpu_unquantized_gemm(shim, remove_weight=False)
                out.gemms.append((layer, shim.cpu_linear))
        if live.numel() == 0:
            continue  # a linear weight vLLM dropped after packing: the new handle is all there is
        if tuple(value.shape) != tuple(live.shape):
            raise UnsupportedUpdate(f"{target}: new shape {tuple(value.shape)}, live {tuple(live.shape)}")
        out.copies.append((live.data, value))
    return out


def _check_linear_shape(name: str, value: torch.Tensor, layer: torch.nn.Module) -> None:
    """A packed linear layer keeps no weight to compare with; check against its declared sizes."""
    rows = getattr(layer, "output_size_per_partition", getattr(layer, "num_embeddings_per_partition", None))
    cols = getattr(layer, "input_size_per_partition", getattr(layer, "embedding_dim", None))
    if rows is None or cols is None:
        raise UnsupportedUpdate(f"{name}: layer {type(layer).__name__} does not declare its weight shape")
    if tuple(value.shape) != (rows, cols):
        raise UnsupportedUpdate(f"{name}: new shape {tuple(value.shape)}, the layer expects {(rows, cols)}")


def _padded(name: str, value: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """Vocab-padded layers (embeddings, lm_head) hold zero rows past the real vocabulary."""
    rows = getattr(layer, "num_embeddings_per_partition", None)
    if rows is None or value.shape[0] == rows:
        return value
    if value.shape[0] > rows:
        raise UnsupportedUpdate(f"{name}: {value.shape[0]} rows, the layer holds {rows}")
    pad = value.new_zeros((rows - value.shape[0], *value.shape[1:]))
    return torch.cat([value, pad], dim=0)
