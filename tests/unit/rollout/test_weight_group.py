"""Forming the collective transport's weight group (``rollout.weight_group``, ``rollout.weight_sync``): a worker that cannot join is
left out alone and the others still get broadcasts; the backend follows the engines' device.

The forming rule (:func:`form_group`) is pure logic, driven here by scripted attempts; the two-phase join
it relies on (arrive, be named a member, build the group) runs for real in one process: a sender and
receivers (threads) over a ``TCPStore`` and gloo, one receiver never arriving."""

from __future__ import annotations

import threading

import pytest
import torch

from rollout.weight_group import JoinResult, WeightGroup, form_group
from rollout.weight_sync import WeightBroadcaster, group_backend, group_device, join_group, new_group, receive_buckets


class Script:
    """``attempt`` for :func:`form_group`: who arrives, who breaks any group it is in, and whether the
    sender can open one at all; records every attempt."""

    def __init__(self, absent: dict[int, str] | None = None, breaks: set[int] | None = None,
                 sender_error: str | None = None) -> None:
        self.absent, self.breaks, self.sender_error = absent or {}, breaks or set(), sender_error
        self.attempts: list[list[int]] = []

    def __call__(self, workers: list[int]) -> JoinResult:
        self.attempts.append(list(workers))
        if self.sender_error:
            raise RuntimeError(self.sender_error)
        present = [i for i in workers if i not in self.absent]
        why = {i: self.absent[i] for i in workers if i in self.absent}
        broken = [i for i in present if i in self.breaks]
        why.update({i: "gloo: connect timed out" for i in present} if broken else {})
        return JoinResult(present, bool(present) and not broken, why)


def test_a_worker_that_cannot_join_is_left_out_alone_in_one_attempt():
    script = Script(absent={1: "no engine process"})
    assert form_group([0, 1, 2], script) == ([0, 2], {1: "no engine process"})
    assert script.attempts == [[0, 1, 2]]  # the others formed without it, no retry


def test_a_member_that_breaks_the_group_is_found_and_left_out():
    script = Script(breaks={2})
    members, left_out = form_group([0, 1, 2], script)
    assert members == [0, 1] and left_out == {2: "gloo: connect timed out"}
    assert script.attempts == [[0, 1, 2], [0, 1, 2], [0], [1], [2], [0, 1]]  # again, each alone, together


def test_a_sender_that_cannot_open_a_group_leaves_everyone_on_the_object_store():
    members, left_out = form_group([0, 1], Script(sender_error="address in use"))
    assert members == [] and set(left_out) == {0, 1}
    assert all("address in use" in why for why in left_out.values())


def test_nobody_arriving_forms_no_group():
    assert form_group([0, 1], Script(absent={0: "a", 1: "b"})) == ([], {0: "a", 1: "b"})


def test_backend_follows_the_engines_device():
    assert group_backend(engine_gpus=1, learner_device="cuda") == "nccl"
    assert group_backend(engine_gpus=0.5, learner_device="cuda") == "nccl"
    assert group_backend(engine_gpus=0, learner_device="cuda") == "gloo"  # CPU engines: host memory
    assert group_backend(engine_gpus=1, learner_device="cpu") == "gloo"  # the sender has no GPU to send from
    assert group_device("gloo") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA"):
            group_device("nccl")
    with pytest.raises(ValueError, match="backend must be one of"):
        new_group(None, 0, 1, 1.0, backend="mpi")
    with pytest.raises(ValueError, match="backend must be one of"):
        WeightGroup([], [], backend="ucc")


def test_two_phase_join_forms_without_the_receiver_that_never_arrives():
    """Receivers 1 and 3 arrive (announcing their engines' dtype), 2 never does: the sender names 1 and 3,
    they form a group of three and both get every tensor of a bf16 broadcast bit-exact."""
    tensors = {f"layer{i}.weight": torch.randn(64, 32) for i in range(5)} | {"norm.weight": torch.ones(32)}
    sender = WeightBroadcaster(bucket_mib=1, join_timeout_s=30.0)
    sender.bucket_bytes = 64 * 32 * 2 * 2  # two bf16 matrices per bucket: several buckets
    info = sender.open([1, 2, 3])
    got: dict[int, dict] = {}
    errors: dict[int, str] = {}

    def receive(rank: int) -> None:
        try:
            group = join_group({**info, "rank": rank}, rank, "bfloat16")
            got[rank] = dict(receive_buckets(group, handle))
        except Exception as e:  # noqa: BLE001 - asserted below
            errors[rank] = repr(e)

    threads = [threading.Thread(target=receive, args=(r,), daemon=True) for r in (1, 3)]
    for t in threads:
        t.start()
    while len(arrived := sender.arrived(info["epoch"])) < 2:
        threading.Event().wait(0.01)
    assert arrived == {1: "bfloat16", 3: "bfloat16"}
    handle = sender.plan(tensors, info["epoch"], "bfloat16")
    assert len(handle["buckets"]) == 3 and handle["bytes"] == (5 * 64 * 32 + 32) * 2
    assert sender.join(info["epoch"], [1, 3])
    out = sender.broadcast(handle)
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert out["bytes"] == handle["bytes"] and out["peak_extra_bytes"] <= 2 * sender.bucket_bytes  # two in flight
    for rank in (1, 3):
        assert list(got[rank]) == list(tensors)
        for name, t in tensors.items():
            assert got[rank][name].dtype == torch.bfloat16 and torch.equal(got[rank][name], t.to(torch.bfloat16))
    sender.close()


def test_a_receiver_left_out_is_told_so_instead_of_hanging():
    sender = WeightBroadcaster(join_timeout_s=30.0)
    info = sender.open([1, 2])
    sender._prefix.set("members", "[1]")  # as if 2 arrived after the members were named
    with pytest.raises(RuntimeError, match="left out of weight group"):
        join_group({**info, "rank": 2}, 2, "float32")
    sender.close()


def test_buckets_in_the_wire_dtype_go_as_they_are_and_every_tensor_arrives():
    """float32 weights sent as float32: a matrix larger than a bucket, or of ALONE_BYTES, travels alone
    without a copy, the small tensors are packed; two buckets in flight at a time, buffers reused, all
    bit-exact."""
    tensors = ({f"m{i}": torch.randn(48, 40) for i in range(4)} | {f"b{i}": torch.randn(7) for i in range(3)}
               | {"big": torch.randn(512, 512)})  # 1 MiB
    sender = WeightBroadcaster(join_timeout_s=30.0)
    sender.bucket_bytes = 1024  # < one 48x40 float32 matrix (7680 bytes)
    info = sender.open([1])
    handle = sender.plan(tensors, info["epoch"])
    assert [len(b) for b in handle["buckets"]] == [1, 1, 1, 1, 3, 1]
    got: dict = {}

    def receive() -> None:
        got.update(receive_buckets(join_group({**info, "rank": 1}, 1, "float32"), handle))

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    while not sender.arrived(info["epoch"]):
        threading.Event().wait(0.01)
    sender.join(info["epoch"], [1])
    out = sender.broadcast(handle)
    thread.join(timeout=60)
    assert out["peak_extra_bytes"] == 3 * 7 * 4  # only the packed bucket needed a buffer
    assert set(got) == set(tensors) and all(torch.equal(got[n], t) for n, t in tensors.items())
    with pytest.raises(RuntimeError, match="not the last one planned"):
        sender.broadcast(handle)  # sent: the sender no longer holds its tensors
    sender.close()
