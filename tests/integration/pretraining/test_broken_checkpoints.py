"""Checkpoints with a missing tensor, a tensor of the wrong shape, or a truncated weight file are refused
with an error naming the tensor and the file, wherever a checkpoint is loaded: ``flywheel eval``, SFT/DPO
``init_from``, and the learner's start model. Built from a good tiny checkpoint by editing its
``model.safetensors``; transformers alone would re-initialise a missing tensor at random, silently."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pretraining.checkpoint import CheckpointError, check_weights, load_checkpoint, load_model

REPO = Path(__file__).resolve().parents[3]
TENSOR = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """good, missing (TENSOR dropped), shape (TENSOR one row short), truncated (file cut), tied (no lm_head,
    config says tied: valid)."""
    from safetensors.torch import load_file, save_file

    from tests.fixtures.tiny_checkpoint import build_tiny_qwen3

    root = tmp_path_factory.mktemp("ckpts")
    good = build_tiny_qwen3(root / "good")
    state = load_file(str(good / "model.safetensors"))
    out = {"good": good}

    def variant(name: str, tensors: dict | None, config_update: dict | None = None) -> Path:
        d = root / name
        shutil.copytree(good, d)
        if tensors is not None:
            save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        if config_update:
            cfg = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps({**cfg, **config_update}))
        out[name] = d
        return d

    variant("missing", {k: v for k, v in state.items() if k != TENSOR})
    variant("shape", {**state, TENSOR: state[TENSOR][:-1].contiguous()})
    truncated = variant("truncated", None)
    data = (good / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    variant("tied", {k: v for k, v in state.items() if k != "lm_head.weight"}, {"tie_word_embeddings": True})
    return out


def _message(ckpt: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        check_weights(ckpt)
    return str(e.value)


def test_good_and_tied_checkpoints_pass(checkpoints):
    check_weights(checkpoints["good"])
    check_weights(checkpoints["tied"])  # lm_head.weight is the embedding: one name of the pair is enough


def test_missing_tensor_names_tensor_file_and_shape(checkpoints):
    msg = _message(checkpoints["missing"])
    assert TENSOR in msg and "model.safetensors" in msg and "missing" in msg and "[128, 64]" in msg


def test_wrong_shape_names_tensor_file_and_both_shapes(checkpoints):
    msg = _message(checkpoints["shape"])
    assert TENSOR in msg and str(checkpoints["shape"] / "model.safetensors") in msg
    assert "[127, 64]" in msg and "[128, 64]" in msg


def test_truncated_file_is_named(checkpoints):
    msg = _message(checkpoints["truncated"])
    assert str(checkpoints["truncated"] / "model.safetensors") in msg and "not a readable safetensors" in msg


@pytest.mark.parametrize("kind", ["missing", "shape", "truncated"])
def test_init_from_of_sft_and_dpo_refuses_a_broken_checkpoint(checkpoints, kind):
    """``run_sft`` / ``run_dpo`` load ``init_from`` with ``load_checkpoint``; the good one still loads."""
    with pytest.raises(CheckpointError):
        load_checkpoint(checkpoints[kind])
    model, tok = load_checkpoint(checkpoints["good"])
    assert model.config.vocab_size >= len(tok)
    assert load_model(checkpoints["tied"]).lm_head.weight is not None


def test_sft_with_a_broken_init_from_writes_nothing(checkpoints, tmp_path):
    from pretraining.config import SFTConfig
    from pretraining.sft import run_sft
    from services.config import load_config

    cfg = load_config(SFTConfig, str(REPO / "configs" / "sft_tiny.yaml"),
                      ["--init_from", str(checkpoints["missing"]), "--out_dir", str(tmp_path / "sft")])
    with pytest.raises(CheckpointError, match=TENSOR):
        run_sft(cfg)
    assert not (tmp_path / "sft").exists() or not any((tmp_path / "sft").rglob("*.safetensors"))


def test_flywheel_eval_refuses_before_starting_vllm(checkpoints, tmp_path):
    from pretraining.config import EvalConfig
    from pretraining.evaluate import main

    for kind in ("missing", "shape"):
        with pytest.raises(SystemExit) as e:
            main(EvalConfig(checkpoint=str(checkpoints[kind]), num_problems=2, k=1, out=str(tmp_path / "r.json")))
        assert str(e.value).startswith("eval: ") and TENSOR in str(e.value)
    assert not (tmp_path / "r.json").exists()


def test_learner_refuses_a_broken_start_model(checkpoints):
    """Real learner ranks (``LearnerWorker.setup``: gloo process group, FSDP2) in a process of their own."""
    script = (
        "import sys\n"
        "from learner.actor import LearnerWorker\n"
        "from tests.conftest import free_port\n"
        "port = free_port()\n"
        "for path in sys.argv[1:]:\n"
        "    w = LearnerWorker({'world_size': 1}, {}, path, rank=0)\n"
        "    try:\n"
        "        print('LOADED', w.setup('127.0.0.1', port), flush=True)\n"
        "    except Exception as e:\n"
        "        print('REFUSED', type(e).__name__, e, flush=True)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    kinds = ["missing", "shape", "good"]
    r = subprocess.run([sys.executable, "-c", script, *(str(checkpoints[k]) for k in kinds)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [x for x in r.stdout.splitlines() if x.startswith(("LOADED", "REFUSED"))]
    assert len(lines) == 3, r.stdout
    missing, shape, good = lines
    assert missing.startswith("REFUSED CheckpointError") and TENSOR in missing
    assert "missing from model.safetensors" in missing
    assert shape.startswith("REFUSED CheckpointError") and TENSOR in shape and "[127, 64]" in shape
    assert good.startswith("LOADED") and "parameters" in good


def test_serve_rollout_refuses_a_broken_model_before_starting_ray(checkpoints, caplog):
    from services.cli import main

    assert main(["serve-rollout", "--model", str(checkpoints["shape"]), "--http_port", "0", "--grpc_port", "0"]) == 2
    assert TENSOR in caplog.text and "[127, 64]" in caplog.text
