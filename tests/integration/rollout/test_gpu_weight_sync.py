"""GPU path: NCCL weight broadcast from a learner process into rollout workers through vLLM's
weight-transfer engine, with requests kept in flight; and tensor-parallel engines; the job's collective
transport into a GPU engine over gloo and over NCCL. Marked ``gpu``
(skipped without CUDA). NCCL cannot put two ranks on one device, so the sender needs its own GPU:
the broadcast test needs 2 GPUs, the tensor-parallel one 3."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class Sender:
    """Learner stand-in on its own GPU: holds a module, broadcasts it over NCCL to the workers."""

    def __init__(self, model_dir: str, workers: list, tp_size: int, port: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda()
        from rollout.weight_sync import RolloutSyncClient, nccl_sender

        self.client = RolloutSyncClient(workers)
        self.engine = nccl_sender(self.client, self.model, "127.0.0.1", port, tp_size=tp_size)

    def push(self, version: int, noise: float) -> list[dict]:
        import torch

        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(noise * torch.randn_like(p))
        self.client.next_version = version
        self.engine.send_weights()
        return self.client.records[-1]


@pytest.mark.parametrize("tp", [1, 2])
def test_nccl_update_in_flight(ray_session, tiny_model, tp):
    if _gpus() < tp + 1:
        pytest.skip(f"needs {tp + 1} GPUs (tp={tp} for the worker + 1 for the sender), found {_gpus()}")
    ray = ray_session
    from rollout.config import RolloutConfig
    from rollout.worker import create_workers
    from tests.conftest import free_port

    cfg = RolloutConfig(model=tiny_model, dtype="float32", max_model_len=1024, tensor_parallel_size=tp,
                        num_gpus_per_worker=tp, weight_transport="nccl", gpu_memory_utilization=0.3)
    [w] = create_workers(cfg, name_prefix=f"gpu-tp{tp}")
    sender = ray.remote(num_gpus=1)(Sender).remote(tiny_model, [w], tp, free_port())
    ref = w.generate.remote([{"prompt_id": f"g{i}", "prompt_token_ids": [5, 6, 7 + i]} for i in range(8)],
                            {"n": 2, "max_tokens": 400, "temperature": 1.0})
    recs = ray.get(sender.push.remote(1, 0.01))
    assert recs[0]["version"] == 1 and recs[0]["stall_s"] >= 0
    groups = ray.get(ref)
    assert len(groups) == 8 and all(len(g["samples"]) == 2 for g in groups)
    assert ray.get(w.get_version.remote()) == 1
    for g in groups:
        for s in g["samples"]:
            assert s["finish_reason"] in ("stop", "length") and s["versions"] == sorted(s["versions"])
    ray.kill(sender)
    ray.kill(w)


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_collective_update_into_a_gpu_engine(ray_session, tiny_model, backend):
    """The job's collective transport into one engine on one GPU, with requests in flight: over gloo (received
    in host memory) or NCCL (the sender's buckets on its own GPU, received on the engine's; ``reload_weights``
    either way)."""
    if _gpus() < (2 if backend == "nccl" else 1):
        pytest.skip(f"needs {2 if backend == 'nccl' else 1} GPU(s), found {_gpus()}")
    ray = ray_session
    from rollout.config import RolloutConfig
    from rollout.fleet import RolloutFleet
    from rollout.weight_update import WeightUpdate
    from rollout.worker import create_workers
    from tests.fixtures.tiny_checkpoint import perturbed_state_dict

    cfg = RolloutConfig(model=tiny_model, dtype="float32", max_model_len=1024, num_gpus_per_worker=1,
                        weight_transport="collective", gpu_memory_utilization=0.3)
    [w] = create_workers(cfg, name_prefix=f"gpu-collective-{backend}")
    sender = {"num_gpus": 1} if backend == "nccl" else {}  # NCCL: no two ranks of a group on one GPU
    fleet = RolloutFleet([w], transport="collective", collective={"bucket_mib": 1, "backend": backend,
                                                                  "broadcaster_options": sender})
    ref = w.generate.remote([{"prompt_id": f"c{i}", "prompt_token_ids": [5, 6, 7 + i]} for i in range(8)],
                            {"n": 2, "max_tokens": 400, "temperature": 1.0})
    fleet.publish(WeightUpdate(1, tensors=ray.put(perturbed_state_dict(tiny_model, scale=0.05, seed=3))), wait=True)
    assert fleet.last_publish["broadcast_to"] == ["gpu-collective-" + backend + "-0"]
    assert ray.get(w.get_version.remote()) == 1
    groups = ray.get(ref)
    assert all(s["versions"] == sorted(s["versions"]) for g in groups for s in g["samples"])
    ray.kill(fleet.weight_group.broadcaster)
    ray.kill(w)
