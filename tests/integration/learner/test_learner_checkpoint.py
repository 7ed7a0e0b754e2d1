"""One in-process learner rank (gloo, world size 1): exact resume, HF export, activation checkpointing,
KL to the reference model, staleness in ``train_step``."""

from __future__ import annotations

import pytest
import torch

from learner.actor import LearnerWorker, free_port
from learner.config import LearnerConfig, LossConfig

CFG = dict(optim={"lr": 2e-3, "weight_decay": 0.01}, warmup_steps=3, micro_batch_size=4, grad_accum=2)


@pytest.fixture(scope="module")
def process_group():
    """A world-size-1 gloo group in this process; the environment is restored afterwards."""
    import os

    import torch.distributed as dist

    env = dict(os.environ)
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    assert dist.get_world_size() == 1
    yield
    if ours:
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(env)


def worker(path, process_group, loss: LossConfig | None = None, **overrides) -> LearnerWorker:
    w = LearnerWorker(LearnerConfig(**{**CFG, **overrides}), loss or LossConfig(), str(path), rank=0)
    w.setup("127.0.0.1", 0)  # the process group already exists
    return w


def weights(w: LearnerWorker) -> dict:
    return w.full_state_dict()


def comparable(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("train_tokens_per_s", "train_step_s")}


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tiny_checkpoint, process_group, groups_factory, tmp_path):
    batches = [groups_factory(2, 4, seed=s) for s in range(4)]
    a = worker(tiny_checkpoint, process_group)
    for b in batches[:2]:
        a.train_step(b)
    extra = {"stage": 1, "data_position": 17, "unconsumed": batches[3]}
    a.save_checkpoint(str(tmp_path / "ckpt"), extra)
    uninterrupted = [comparable(a.train_step(b)) for b in batches[2:]]
    final = weights(a)

    b = worker(tiny_checkpoint, process_group)  # a fresh learner from the starting weights
    assert b.load_checkpoint(str(tmp_path / "ckpt")) == extra
    assert (b.step, b.version) == (2, 2)  # 8 sequences = one optimizer step per batch
    resumed = [comparable(b.train_step(x)) for x in batches[2:]]
    assert resumed == uninterrupted
    for k, v in weights(b).items():
        assert torch.equal(v, final[k]), k


def test_checkpoint_folder_is_a_loadable_hf_model(tiny_checkpoint, process_group, groups_factory, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    w = worker(tiny_checkpoint, process_group)
    w.train_step(groups_factory(2, 4, seed=5))
    w.export_hf(str(tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    ours = weights(w)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ours[k]), k
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok.decode(tok.encode("2+3=5")) == "2+3=5"
    w.export_hf(str(tmp_path / "hf16"), dtype="bfloat16")
    m16 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf16"))
    assert m16.config.dtype == torch.bfloat16


def test_activation_checkpointing_gives_the_same_step(tiny_checkpoint, process_group, groups_factory):
    groups = groups_factory(2, 4, seed=6)
    plain = comparable(worker(tiny_checkpoint, process_group).train_step(groups))
    ckpt = comparable(worker(tiny_checkpoint, process_group, activation_checkpointing=True).train_step(groups))
    for k in ("loss", "grad_norm", "entropy"):
        assert ckpt[k] == pytest.approx(plain[k], rel=1e-5)


def test_kl_to_reference_is_zero_first_and_grows(tiny_checkpoint, process_group, groups_factory):
    w = worker(tiny_checkpoint, process_group, LossConfig(kl_coef=0.05), grad_accum=8)
    first = w.train_step(groups_factory(2, 4, seed=7))
    second = w.train_step(groups_factory(2, 4, seed=8))
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert second["kl"] > 1e-6


def test_stale_groups_are_dropped_inside_train_step(tiny_checkpoint, process_group, groups_factory):
    w = worker(tiny_checkpoint, process_group, LossConfig(max_staleness=0), grad_accum=8)
    w.train_step(groups_factory(2, 4, seed=9, version=0))  # now at version 1
    m = w.train_step(groups_factory(2, 4, seed=10, version=0))
    assert m["skipped"] and m["dropped_stale"] == 8 and m["version"] == 1


def test_several_optimizer_steps_per_batch_use_the_start_weights_as_pi_old(tiny_checkpoint, process_group, groups_factory):
    w = worker(tiny_checkpoint, process_group, LossConfig(tis_cap=None), optim={"lr": 5e-2}, warmup_steps=0,
               micro_batch_size=2, grad_accum=1)
    m = w.train_step(groups_factory(2, 4, seed=11))  # 8 sequences / 2 per step = 4 optimizer steps
    assert m["optimizer_steps"] == 4 and m["version"] == 1  # one published policy per train_step
    assert abs(m["ratio_mean"] - 1.0) > 1e-3 and m["clip_fraction"] > 0.0  # later steps moved away from pi_old


def test_set_lr_rescales_the_schedule(tiny_checkpoint, process_group, groups_factory):
    w = worker(tiny_checkpoint, process_group, warmup_steps=4, optim={"lr": 1e-3})
    w.train_step(groups_factory(2, 4, seed=12))  # one step into the warmup: lr = 2/4 * 1e-3
    assert w.state()["lr"] == pytest.approx(5e-4)
    w.set_lr(1e-2)
    assert w.state()["lr"] == pytest.approx(5e-3)


def test_temperature_scales_the_policy_logprobs(tiny_checkpoint, process_group, groups_factory):
    groups = groups_factory(2, 4, seed=13)
    hot = worker(tiny_checkpoint, process_group, LossConfig(temperature=2.0)).train_step(groups)
    plain = worker(tiny_checkpoint, process_group).train_step(groups)
    assert hot["entropy"] > plain["entropy"]  # softmax(logits / 2) is flatter
    assert hot["tis_weight_mean"] != pytest.approx(plain["tis_weight_mean"])


def test_published_weights_leave_out_a_tied_lm_head(tiny_checkpoint, process_group):
    """vLLM has no ``lm_head.weight`` to load when it is tied to the embeddings (the pipeline's models)."""
    w = worker(tiny_checkpoint, process_group)
    full, published = w.full_state_dict(), w.full_state_dict("bfloat16", drop_tied=True)
    assert "lm_head.weight" in full and "lm_head.weight" not in published
    assert set(published) == set(full) - {"lm_head.weight"}


def test_lr_scale_moves_the_matched_parameters_faster_and_survives_set_lr(tiny_checkpoint, process_group, groups_factory):
    w = worker(tiny_checkpoint, process_group, warmup_steps=0,
               optim={"lr": 1e-4, "weight_decay": 0.0, "lr_scale": {"model.norm.weight": 100.0}})
    before = {k: v.clone() for k, v in weights(w).items()}
    w.train_step(groups_factory(2, 4, seed=14))
    after = weights(w)
    moved = {k: float((after[k] - before[k]).abs().max()) for k in ("model.norm.weight", "model.layers.0.mlp.up_proj.weight")}
    # Adam's first step moves each parameter by ~lr: 1e-2 for the scaled gain, 1e-4 for the rest
    assert moved["model.norm.weight"] == pytest.approx(1e-2, rel=0.05)
    assert moved["model.layers.0.mlp.up_proj.weight"] == pytest.approx(1e-4, rel=0.05)
    w.set_lr(2e-4)
    # groups: the rest (matrices, then embeddings and norms), then the scaled gain
    assert [g["lr"] for g in w.optimizer.param_groups] == pytest.approx([2e-4, 2e-4, 2e-2])


def test_packed_padded_and_token_budget_steps_agree(tiny_checkpoint, process_group, groups_factory):
    """The same batch through padded rows, packed rows and token-budget micro-batches: same update."""
    groups = groups_factory(2, 4, seed=15, completion_len=(2, 40))
    layouts = {"padded": dict(pack_sequences=False), "packed": {}, "budget": dict(max_tokens_per_micro_batch=60)}
    metrics, after = {}, {}
    for name, kw in layouts.items():
        w = worker(tiny_checkpoint, process_group, LossConfig(entropy_coef=0.01), **kw)
        metrics[name] = comparable(w.train_step(groups))
        after[name] = weights(w)
    for name in ("packed", "budget"):
        for k in ("loss", "policy_loss", "entropy", "grad_norm", "tis_weight_mean"):
            assert metrics[name][k] == pytest.approx(metrics["padded"][k], rel=1e-5, abs=1e-8), (name, k)
        assert metrics[name]["loss_tokens"] == metrics["padded"]["loss_tokens"]
        assert metrics[name]["train_tokens"] == metrics["padded"]["train_tokens"]
        for k, v in after[name].items():
            assert float((v - after["padded"][k]).abs().max()) < 1e-5, (name, k)


def test_activation_checkpointing_is_on_by_default_from_a_model_size(tiny_checkpoint, process_group):
    assert not worker(tiny_checkpoint, process_group).model.is_gradient_checkpointing  # tiny: under 100M
    small_threshold = worker(tiny_checkpoint, process_group, activation_checkpointing_min_params=1000)
    assert small_threshold.model.is_gradient_checkpointing
    assert not worker(tiny_checkpoint, process_group, activation_checkpointing=False,
                      activation_checkpointing_min_params=0).model.is_gradient_checkpointing
