"""The collective weight transport's NCCL backend (``rollout.weight_sync``) on GPUs, without vLLM or Ray,
so ``deploy/gpu_check.sh`` runs it on a one-GPU machine: the sender's buckets on its GPU, each receiver's
on its own (NCCL puts no two ranks of a group on one device). With one GPU the group is the sender alone
(the NCCL process group, the device buffers, the two-in-flight send path); with two, a receiver thread on
``cuda:1`` gets every tensor bit-exact in the engines' dtype. Marked ``gpu`` (skipped without CUDA)."""

from __future__ import annotations

import threading

import pytest
import torch

from rollout.weight_sync import WeightBroadcaster, group_device, join_group, receive_buckets

pytestmark = pytest.mark.gpu


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.parametrize("receivers", [0, 1])
def test_nccl_weight_group_broadcasts_from_and_into_device_buckets(receivers):
    if _gpus() < 1 + receivers:
        pytest.skip(f"needs {1 + receivers} GPU(s) (one per rank), found {_gpus()}")
    tensors = {f"layer{i}.weight": torch.randn(256, 128) for i in range(6)} | {"norm.weight": torch.ones(128)}
    sender = WeightBroadcaster(join_timeout_s=60.0, backend="nccl", host="127.0.0.1")
    sender.bucket_bytes = 256 * 128 * 2 * 2  # two bf16 matrices per bucket: four buckets, buffers reused
    info = sender.open(list(range(1, 1 + receivers)))
    handle = sender.plan(tensors, info["epoch"], "bfloat16")
    got: dict = {}
    errors: list[str] = []

    def receive() -> None:
        try:
            device = group_device("nccl", "cuda:1")
            group = join_group({**info, "rank": 1}, 1, "bfloat16")
            got.update({n: t.cpu() for n, t in receive_buckets(group, handle, device)})
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=receive, daemon=True) for _ in range(receivers)]
    for t in threads:
        t.start()
    while len(sender.arrived(info["epoch"])) < receivers:
        threading.Event().wait(0.01)
    group_device("nccl", "cuda:0")
    assert sender.join(info["epoch"], list(range(1, 1 + receivers)))
    out = sender.broadcast(handle)
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert out["bytes"] == handle["bytes"] and 0 < out["peak_extra_bytes"] <= 2 * sender.bucket_bytes
    if receivers:
        assert set(got) == set(tensors)
        for name, t in tensors.items():
            assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], t.to(torch.bfloat16)), name
    sender.close()
