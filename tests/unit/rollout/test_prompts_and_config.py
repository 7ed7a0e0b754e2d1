"""Pure logic of the rollout side: configs, the prompt queue with leases, version spans, update
validation, the server's config and checksum."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from rollout.config import RolloutConfig, SamplingConfig
from rollout.prompts import GroupSink, PromptSource


def test_sampling_defaults_and_bounds():
    s = SamplingConfig()
    assert s.n == 8 and s.temperature == 1.0 and s.seed is None
    with pytest.raises(ValidationError, match="n"):
        SamplingConfig(n=0)
    with pytest.raises(ValidationError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValidationError):
        SamplingConfig(nonsense=1)


def test_rollout_config_rules():
    c = RolloutConfig(model="/ckpt/sft/")
    assert c.model_name == "sft" and c.reprefill_after_versions is None and c.weight_transport == "object_store"
    assert RolloutConfig(served_model_name="m").model_name == "m"
    with pytest.raises(ValidationError, match="nccl"):
        RolloutConfig(weight_transport="nccl")
    with pytest.raises(ValidationError, match="tensor_parallel_size"):
        RolloutConfig(tensor_parallel_size=2, num_gpus_per_worker=1)
    with pytest.raises(ValidationError, match="reprefill_after_versions"):
        RolloutConfig(reprefill_after_versions=0)


def test_rollout_config_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, rollout.config, services.rollout_server; print('torch' in sys.modules, 'vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def _p(i):
    return {"prompt_id": f"p{i}", "prompt_token_ids": [i + 1]}


def test_prompt_source_fifo_leases_and_requeue():
    src = PromptSource([_p(i) for i in range(5)])
    assert [p["prompt_id"] for p in src.next(2, "w0")] == ["p0", "p1"]
    assert [p["prompt_id"] for p in src.next(2, "w1")] == ["p2", "p3"]
    src.release("w0", ["p0"])
    assert src.leased() == 3 and src.leased("w0") == 1
    assert src.requeue_lessee("w1") == 2
    assert [p["prompt_id"] for p in src.next(10)] == ["p2", "p3", "p4"]  # re-queued at the head
    assert src.next(3) == [] and not src.done()
    src.release("w0", ["p1"])
    assert src.done()


def test_prompt_source_rejects_bad_prompts_and_repeats_epochs():
    with pytest.raises(ValueError, match="prompt_id"):
        PromptSource([{"text": "x"}])
    with pytest.raises(ValueError, match="neither"):
        PromptSource([{"prompt_id": "a"}])
    src = PromptSource([_p(0), _p(1)], epochs=2)
    assert len(src.next(5)) == 2 and len(src.next(5)) == 2 and src.next(5) == []


def test_group_sink():
    sink = GroupSink()
    sink.put([{"group_id": "a"}, {"group_id": "b"}])
    assert sink.take(1) == [{"group_id": "a"}] and sink.count() == 2 and sink.take() == [{"group_id": "b"}]


def test_version_spans_expand_per_token():
    from rollout.engine import _expand_versions

    spans = [SimpleNamespace(version="3", start=0, end=2), SimpleNamespace(version="4", start=2, end=5)]
    assert _expand_versions(spans, 5, 0) == [3, 3, 4, 4, 4]
    assert _expand_versions(None, 3, 7) == [7, 7, 7]


def test_validate_update_messages():
    import torch

    from rollout.weight_update import WeightUpdate, WeightUpdateError

    def validate_update(version, current, tensors, expected):
        WeightUpdate(version, tensors=tensors).validate(current, expected)

    expected = {"w": ([2, 2], "F32")}
    ok = {"w": torch.zeros(2, 2)}
    validate_update(2, 1, ok, expected)
    for args, words in [((1, 1, ok), "stale"), ((2, 1, {}), "non-empty"), ((2, 1, {"x": torch.zeros(2, 2)}), "unknown"),
                        ((2, 1, {"w": torch.zeros(3)}), "shape"), ((2, 1, {"w": torch.zeros(2, 2, dtype=torch.int64)}),
                                                                   "floating"),
                        ((2, 1, {"w": "x"}), "not a torch.Tensor"), (("2", 1, ok), "int")]:
        with pytest.raises(WeightUpdateError, match=words):
            validate_update(*args, expected)


def test_server_config_model_override_and_checksum(tmp_path):
    from services.rollout_server import RolloutServerConfig, file_sha256

    cfg = RolloutServerConfig(model="/x/ckpt")
    assert cfg.rollout.model == "/x/ckpt" and cfg.host == "127.0.0.1"
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"abc")
    assert file_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    (tmp_path / "b.safetensors").write_bytes(b"def")
    assert file_sha256(tmp_path) == hashlib.sha256(b"abcdef").hexdigest()


def test_cli_knows_serve_rollout():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "services.cli", "serve-rollout", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "model" in out and "rollout.reprefill_after_versions" in out and "NOT IMPLEMENTED" not in out


def test_cpu_threads_bind_gives_each_worker_its_own_cores():
    from rollout.config import RolloutConfig
    from rollout.worker import worker_options

    cfg = RolloutConfig(model="m", num_workers=3, cpu_threads_bind=["0", "1"])
    binds = [worker_options(cfg, index=i)["runtime_env"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] for i in range(3)]
    assert binds == ["0", "1", "0"]
    assert "VLLM_CPU_OMP_THREADS_BIND" not in worker_options(RolloutConfig(model="m"))["runtime_env"]["env_vars"]


def test_group_to_dict_is_asdict_field_for_field():
    """The hand-written ``to_dict`` (fast) must stay equal to ``dataclasses.asdict``, new fields included."""
    from dataclasses import asdict

    from rollout.trajectory import Group, Sample

    s = Sample(completion_token_ids=[3, 4], logprobs=[-0.5, -1.0], versions=[1, 2], finish_reason="stop",
               text="ab", generation_s=0.1, reward=1.0, reward_parts={"correctness": 1.0, "why": {"x": [1]}},
               correct=True)
    g = Group(group_id="g", prompt_token_ids=[1, 2], samples=[s, s], prompt="p", gold="7", stage=2,
              meta={"worker": "w", "nested": {"a": [1, 2]}})
    d = g.to_dict()
    assert d == asdict(g) and list(d) == list(asdict(g)) and list(d["samples"][0]) == list(asdict(s))
    d["samples"][0]["completion_token_ids"].append(9)
    d["meta"]["nested"]["a"].append(3)
    d["samples"][0]["reward_parts"]["why"]["x"].append(2)
    assert s.completion_token_ids == [3, 4] and g.meta["nested"]["a"] == [1, 2] and s.reward_parts["why"]["x"] == [1]
    assert Group.from_dict(g.to_dict()) == g


def test_compilation_falls_back_to_eager_without_a_cpp_compiler(monkeypatch, caplog):
    import shutil

    import torch

    from rollout.config import RolloutConfig
    from rollout.engine import RolloutEngine

    assert RolloutEngine(RolloutConfig(model="m"))._eager()  # the default: eager
    compiled = RolloutEngine(RolloutConfig(model="m", enforce_eager=False), worker_id="w0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    assert compiled._eager() is False
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with caplog.at_level("WARNING"):
        assert compiled._eager() is True
    assert "no C++ compiler" in caplog.text and "w0" in caplog.text
