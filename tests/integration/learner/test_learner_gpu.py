"""The learner on CUDA (NCCL, bf16 mixed precision), in-process with world size 1. Skipped without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from learner.actor import LearnerWorker, free_port
from learner.config import LearnerConfig, LossConfig

pytestmark = pytest.mark.gpu
CFG = dict(optim={"lr": 2e-3}, warmup_steps=2, micro_batch_size=4, grad_accum=2)


@pytest.fixture(scope="module")
def process_group():
    """One process group serving both devices (gloo for CPU tensors, NCCL for CUDA)."""
    import os

    import torch.distributed as dist

    env = dict(os.environ)
    dist.init_process_group("cpu:gloo,cuda:nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(env)


def worker(path, device: str, **kw) -> LearnerWorker:
    w = LearnerWorker(LearnerConfig(device=device, **{**CFG, **kw}), LossConfig(), str(path), rank=0)
    w.setup("127.0.0.1", 0)
    return w


def test_bf16_step_on_cuda_tracks_the_fp32_cpu_step(tiny_checkpoint, process_group, groups_factory):
    groups = [groups_factory(2, 4, seed=s) for s in range(3)]
    gpu = worker(tiny_checkpoint, "cuda")
    cpu = worker(tiny_checkpoint, "cpu")
    p = next(gpu.model.parameters())
    assert p.device.type == "cuda" and p.dtype == torch.float32  # fp32 master weights, bf16 compute
    for g in groups:
        mg, mc = gpu.train_step(g), cpu.train_step(g)
        assert math.isfinite(mg["loss"]) and math.isfinite(mg["grad_norm"])
        assert mg["entropy"] == pytest.approx(mc["entropy"], rel=2e-2)
        assert mg["loss_tokens"] == mc["loss_tokens"]
    sg, sc = gpu.full_state_dict(), cpu.full_state_dict()
    assert all(v.device.type == "cpu" for v in sg.values())
    worst = max(float((sg[k] - sc[k]).abs().max()) for k in sc)
    assert worst < 2e-2, worst  # three Adam steps of lr 2e-3 in bf16 vs fp32


def test_checkpoint_resume_on_cuda(tiny_checkpoint, process_group, groups_factory, tmp_path):
    batches = [groups_factory(2, 4, seed=10 + s) for s in range(3)]
    a = worker(tiny_checkpoint, "cuda")
    a.train_step(batches[0])
    a.save_checkpoint(str(tmp_path / "c"), {"stage": 2})
    ref = a.train_step(batches[1]), a.train_step(batches[2])
    b = worker(tiny_checkpoint, "cuda")
    assert b.load_checkpoint(str(tmp_path / "c")) == {"stage": 2}
    got = b.train_step(batches[1]), b.train_step(batches[2])
    for r, g in zip(ref, got):
        assert g["loss"] == pytest.approx(r["loss"], rel=1e-4, abs=1e-6)
        assert g["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-4)


def test_export_bf16_from_cuda_loads_in_transformers(tiny_checkpoint, process_group, groups_factory, tmp_path):
    from transformers import AutoModelForCausalLM

    w = worker(tiny_checkpoint, "cuda", activation_checkpointing=True)
    w.train_step(groups_factory(2, 4, seed=20))
    w.export_hf(str(tmp_path / "hf"), dtype="bfloat16")
    m = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).cuda()
    out = m(input_ids=torch.tensor([[5, 6, 7]], device="cuda")).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


NCCL_ONLY = """
import json, sys
sys.path.insert(0, sys.argv[3])
from conftest import make_groups
from learner.actor import LearnerWorker, free_port
from learner.config import LearnerConfig, LossConfig
w = LearnerWorker(LearnerConfig(device="cuda", optim={"lr": 1e-3}, micro_batch_size=4, grad_accum=1),
                  LossConfig(kl_coef=0.01), sys.argv[1], rank=0)
w.setup("127.0.0.1", free_port())           # creates a pure NCCL group, as a Ray actor does
m = [w.train_step(make_groups(2, 4, seed=s)) for s in range(2)]   # 2 optimizer steps per batch
w.save_checkpoint(sys.argv[2] + "/ckpt", {"k": 1})
extra = w.load_checkpoint(sys.argv[2] + "/ckpt")
sd = w.full_state_dict("bfloat16")
w.export_hf(sys.argv[2] + "/hf")
print(json.dumps({"metrics": m, "extra": extra, "n": len(sd), "dtype": str(next(iter(sd.values())).dtype)}))
w.shutdown()
"""


def test_pure_nccl_group_as_in_a_ray_actor(tiny_checkpoint, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    proc = subprocess.run([sys.executable, "-c", NCCL_ONLY, str(tiny_checkpoint), str(tmp_path), str(here)],
                          capture_output=True, text=True, timeout=300, cwd=here.parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["extra"] == {"k": 1} and out["dtype"] == "torch.bfloat16"
    assert [m["optimizer_steps"] for m in out["metrics"]] == [2, 2] and out["metrics"][1]["version"] == 2
    assert out["metrics"][1]["kl"] > 0 and all(math.isfinite(m["loss"]) for m in out["metrics"])
    assert (tmp_path / "hf" / "model.safetensors").is_file()
