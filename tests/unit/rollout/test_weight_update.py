"""The versioned weight update record and its one check of each kind (version, header reader, specs)."""

from __future__ import annotations

import pickle

import pytest
import torch

from rollout.weight_update import (
    MAX_VERSION,
    StaleWeightUpdate,
    WeightUpdate,
    WeightUpdateError,
    check_version,
    from_vllm_label,
    read_specs,
    stale_cause,
    validate_specs,
    vllm_label,
)


def test_version_is_an_int_that_only_grows_and_is_bounded():
    assert check_version(3, 2) == 3
    for bad, words in [(True, "int"), ("3", "int"), (3.0, "int"), (MAX_VERSION + 1, "largest")]:
        with pytest.raises(WeightUpdateError, match=words):
            check_version(bad, 0)
    with pytest.raises(StaleWeightUpdate, match=r"version 4 <= current version 4") as err:
        check_version(4, 4)
    assert (err.value.version, err.value.current) == (4, 4)


def test_stale_refusal_survives_pickling_and_is_found_behind_a_wrapper():
    err = pickle.loads(pickle.dumps(StaleWeightUpdate(4, 5)))  # how Ray ships it back to the caller
    assert (err.version, err.current, str(err)) == (4, 5, "stale weight update: version 4 <= current version 5")

    class Wrapped(Exception):  # Ray's RayTaskError keeps the original in ``cause``
        cause = err

    assert stale_cause(Wrapped()) is err and stale_cause(err) is err
    assert stale_cause(WeightUpdateError("shape")) is None


def test_one_header_reader_for_files_and_folders(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16)}, str(tmp_path / "m1.safetensors"))
    save_file({"c": torch.zeros(1)}, str(tmp_path / "m2.safetensors"))
    assert read_specs(tmp_path / "m1.safetensors") == {"a": ([2, 3], "F32"), "b": ([4], "BF16")}
    assert set(read_specs(tmp_path)) == {"a", "b", "c"}
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "m1.safetensors").read_bytes()[:20])
    with pytest.raises(WeightUpdateError, match="cut.safetensors: not a readable safetensors"):
        read_specs(tmp_path / "cut.safetensors")


def test_specs_are_checked_against_the_model_once():
    expected = {"w": ([2, 2], "F32"), "b": ([2], "F32")}
    validate_specs({"w": ([2, 2], "BF16")}, expected)  # a partial update in another float dtype is fine
    validate_specs({"anything": ([9], "F32")}, {})  # no local checkpoint: only dtypes are checked
    for specs, words in [({"w": ([2, 2], "I64")}, "floating"), ({"x": ([2, 2], "F32")}, "unknown weight 'x'"),
                         ({"w": ([3], "F32")}, r"shape \[3\], the model expects \[2, 2\]"), ({}, "at least one")]:
        with pytest.raises(WeightUpdateError, match=words):
            validate_specs(specs, expected)
    with pytest.raises(WeightUpdateError, match="'b' is missing"):
        validate_specs({"w": ([2, 2], "F32")}, expected, complete=True)


def test_an_update_carries_exactly_one_payload_and_says_what_it_carries(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(WeightUpdateError, match="exactly one"):
        WeightUpdate(1)
    with pytest.raises(WeightUpdateError, match="exactly one"):
        WeightUpdate(1, tensors={"w": torch.zeros(1)}, files=["x"])
    u = WeightUpdate(2, tensors={"w": torch.zeros(2, 2)})
    assert u.transport == "tensors" and u.validate(1, {"w": ([2, 2], "F32")}) == {"w": ([2, 2], "F32")}
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    assert WeightUpdate(2, files=[str(tmp_path / "w.safetensors")]).payload_specs() == {"w": ([2, 2], "F32")}
    with pytest.raises(WeightUpdateError, match="must say what it carries"):
        WeightUpdate(2, collective={"group": "g"}).validate(1, {})
    assert from_vllm_label(vllm_label(7)) == 7 and vllm_label(7) == "7"


def test_buckets_are_bounded_and_keep_one_dtype_each():
    from rollout.weight_sync import plan_buckets

    specs = {"a": ([256], "F32"), "b": ([256], "F32"), "c": ([1024], "F32"), "d": ([8], "BF16"), "e": ([8], "F32")}
    assert plan_buckets(specs, 2048) == [["a", "b"], ["c"], ["d"], ["e"]]  # c alone: larger than a bucket
    assert plan_buckets(specs, 1 << 20) == [["a", "b", "c"], ["d"], ["e"]]
    assert plan_buckets(specs, 1 << 20, alone={"b"}) == [["a"], ["b"], ["c"], ["d"], ["e"]]  # b as it is
