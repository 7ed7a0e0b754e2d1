"""An exported learner folder loads unchanged in vLLM and generates what transformers generates."""

from __future__ import annotations

import pytest
import torch

from learner.actor import LearnerWorker, free_port
from learner.config import LearnerConfig, LossConfig


@pytest.mark.slow
def test_vllm_loads_the_export(tiny_checkpoint, groups_factory, tmp_path, monkeypatch):
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        w = LearnerWorker(LearnerConfig(optim={"lr": 1e-3}), LossConfig(), str(tiny_checkpoint), 0)
        w.setup("127.0.0.1", 0)
        w.train_step(groups_factory(2, 4, seed=30))
        w.export_hf(str(tmp_path / "hf"))
    finally:
        dist.destroy_process_group()
    from vllm import LLM, SamplingParams

    llm = LLM(str(tmp_path / "hf"), dtype="float32", max_model_len=256, enforce_eager=True)
    prompt = [5, 6, 7, 8]
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=8, temperature=0.0))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
    got = list(out[0].outputs[0].token_ids)
    llm.llm_engine.engine_core.shutdown()  # stop the engine process before pytest closes its log capture
    del llm
    assert got == expected
