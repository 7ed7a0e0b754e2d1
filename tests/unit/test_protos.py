"""The generated gRPC modules import and are up to date with protos/*.proto."""

from __future__ import annotations

from pathlib import Path

from protos.generate import ROOT, generate


def test_generated_modules_import():
    from protos import reward_pb2, reward_pb2_grpc, rollout_pb2, rollout_pb2_grpc

    assert reward_pb2.VerifyRequest(items=[reward_pb2.VerifyItem(id="1", completion="x", gold="1")]).items[0].gold == "1"
    assert hasattr(reward_pb2_grpc, "RewardServiceStub") and hasattr(rollout_pb2_grpc, "RolloutServiceStub")
    assert not reward_pb2.VerifyOptions().HasField("extraction")  # unset: the server's default mode
    assert reward_pb2.VerifyOptions(extraction="lenient").extraction == "lenient"
    assert rollout_pb2.SamplingParams(n=4).n == 4


def test_generated_code_is_not_stale(tmp_path: Path):
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    stale = [f.name for f in fresh if f.read_bytes() != (ROOT / "protos" / f.name).read_bytes()]
    committed = {p.name for p in (ROOT / "protos").glob("*_pb2*.py*")}
    assert not stale, f"run `make protos`: generated code differs for {stale}"
    assert committed == {f.name for f in fresh}, "generated files and committed files differ"
