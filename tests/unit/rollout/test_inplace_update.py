"""The pure parts of prepare-then-swap weight updates: checkpoint names onto vLLM's stacked
parameters, stacking with size checks, vocab padding. (The whole path against a real engine and
transformers is tested in tests/integration/rollout/test_inflight_sync.py.)"""

from __future__ import annotations

import pytest
import torch

from rollout.inplace_update import UnsupportedUpdate, _padded, _stacked, _target_name


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                                       "gate_up_proj": ["gate_proj", "up_proj"]}


class _Layer(torch.nn.Module):
    def __init__(self, sizes: list[int] | None = None, rows: int | None = None) -> None:
        super().__init__()
        if sizes is not None:
            self.output_partition_sizes = sizes
        if rows is not None:
            self.num_embeddings_per_partition = rows


def test_checkpoint_names_map_onto_stacked_parameters_with_their_shard():
    m = _Model()
    assert _target_name(m, "model.layers.0.self_attn.k_proj.weight") == ("model.layers.0.self_attn.qkv_proj.weight", 1)
    assert _target_name(m, "model.layers.3.mlp.up_proj.weight") == ("model.layers.3.mlp.gate_up_proj.weight", 1)
    assert _target_name(m, "model.layers.0.self_attn.o_proj.weight") == ("model.layers.0.self_attn.o_proj.weight",
                                                                         None)
    assert _target_name(m, "model.norm.weight") == ("model.norm.weight", None)


def test_shards_are_stacked_in_q_k_v_order_and_sizes_are_checked():
    q, k, v = torch.full((4, 2), 1.0), torch.full((2, 2), 2.0), torch.full((2, 2), 3.0)
    out = _stacked("qkv", {"v": v, "q": q, "k": k}, _Layer([4, 2, 2]))
    assert out[:4].eq(1).all() and out[4:6].eq(2).all() and out[6:].eq(3).all()
    gate, up = torch.zeros(3, 2), torch.ones(3, 2)
    assert _stacked("gate_up", {1: up, 0: gate}, _Layer([3, 3]))[3:].eq(1).all()
    with pytest.raises(UnsupportedUpdate, match="do not match output sizes"):
        _stacked("qkv", {"q": q, "k": k}, _Layer([4, 2, 2]))  # a missing shard
    with pytest.raises(UnsupportedUpdate, match="do not match output sizes"):
        _stacked("qkv", {"q": q, "k": k, "v": v}, _Layer([4, 4, 4]))


def test_vocab_padded_layers_get_zero_rows():
    w = torch.ones(5, 3)
    out = _padded("lm_head.weight", w, _Layer(rows=8))
    assert out.shape == (8, 3) and out[:5].eq(1).all() and out[5:].eq(0).all()
    assert _padded("x", w, _Layer()) is w
    with pytest.raises(UnsupportedUpdate, match="6 rows"):
        _padded("x", torch.ones(6, 3), _Layer(rows=4))
