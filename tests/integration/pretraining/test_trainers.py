"""Pretrain / SFT / DPO / merge through the real CLI at toy sizes: outputs, exact resume, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.pretraining.conftest import REPO, SMALL_PRETRAIN, run_cli


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_writes_stages_final_metrics_and_curve(pretrained):
    for name in ("stage-1-general", "stage-2-reasoning", "final", "tokenizer"):
        assert (pretrained / name).is_dir(), name
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (pretrained / "final" / f).is_file(), f
    assert "chat_template" in json.loads((pretrained / "final" / "tokenizer_config.json").read_text())
    losses = _losses(pretrained)
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert (pretrained / "loss.png").stat().st_size > 1000


def test_resume_reproduces_the_uninterrupted_loss_curve(pretrained, tmp_path):
    # The fixture run saved a resumable checkpoint at step 6 (mid stage 2). Resume from it elsewhere.
    shutil.copytree(pretrained / "checkpoint-latest", tmp_path / "checkpoint-latest")
    shutil.copytree(pretrained / "tokenizer", tmp_path / "tokenizer")
    assert json.loads((tmp_path / "checkpoint-latest" / "flywheel.json").read_text())["step"] == 6
    assert run_cli("pretrain", "--config", str(REPO / "configs/pretrain_tiny.yaml"), "--out_dir", str(tmp_path),
                   "--resume", "true", *SMALL_PRETRAIN) == 0
    full = _losses(pretrained)
    resumed = _losses(tmp_path)[-2:]  # steps 7 and 8
    assert resumed == pytest.approx(full[-2:], abs=1e-6)
    a, b = load_file(str(pretrained / "final/model.safetensors")), load_file(str(tmp_path / "final/model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_sft_trains_on_assistant_tokens_and_exports(sft_checkpoint):
    run = sft_checkpoint.parent
    assert (sft_checkpoint / "model.safetensors").is_file()
    assert all(loss > 0 for loss in _losses(run))


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "apo_zero"])
def test_dpo_runs_each_loss_and_logs_margins(sft_checkpoint, tmp_path, loss):
    assert run_cli("dpo", "--config", str(REPO / "configs/dpo_tiny.yaml"), "--init_from", str(sft_checkpoint),
                   "--out_dir", str(tmp_path), "--n_pairs", "16", "--batch_size", "8", "--loss", loss,
                   "--pairs", "synthetic", "--rpo_alpha", "0.5") == 0  # synthetic: no vLLM engine per loss
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    assert {"reward_chosen", "reward_rejected", "reward_margin", "preference_acc", "nll_chosen"} <= set(recs[0])
    # first step: policy == reference, so every implicit reward is 0
    assert recs[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert (tmp_path / "final/model.safetensors").is_file()


def test_merge_of_two_identical_checkpoints_is_the_identity(pretrained, tmp_path):
    src = pretrained / "final"
    assert run_cli("merge", "--checkpoints", f"[{src}, {src}]", "--out_dir", str(tmp_path / "m")) == 0
    a, b = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "m/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-7, rtol=0)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))  # loads as a normal checkpoint


def test_merge_refuses_mismatched_architectures(pretrained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(pretrained / "final", other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["num_hidden_layers"] = 2
    (other / "config.json").write_text(json.dumps(cfg))
    from pretraining.merge import MergeError, merge_checkpoints

    with pytest.raises(MergeError, match="num_hidden_layers"):
        merge_checkpoints([pretrained / "final", other], tmp_path / "m")
    assert run_cli("merge", "--checkpoints", f"[{pretrained / 'final'}, {other}]", "--out_dir", str(tmp_path / "m")) == 2


def test_clear_errors_for_bad_inputs(pretrained, tmp_path, capsys):
    from pretraining.checkpoint import load_checkpoint, save_checkpoint
    from pretraining.model import build_model
    from pretraining.tokenizer import load_tokenizer

    tok = load_tokenizer(pretrained / "tokenizer")
    with pytest.raises(ValueError, match="do not belong together"):
        save_checkpoint(build_model("tiny", 300), tok, tmp_path / "bad")  # tokenizer/model mismatch
    assert run_cli("sft", "--init_from", str(pretrained / "final"), "--out_dir", str(tmp_path / "s"),
                   "--n_examples", "4", "--seq_len", "16") == 2
    assert "row 0: the conversation has" in capsys.readouterr().err  # "... longer than seq_len=16", one line
    assert run_cli("sft", "--n_examples", "0") == 2  # config validation names the field
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path / "nowhere")


def test_one_process_fsdp_matches_plain_training(pretrained, sft_checkpoint, tmp_path):
    # distributed.fsdp=on in one process (what a GPU machine gets by default): a 1-rank FSDP2 group trains
    # the same steps as the plain process, exports a normal HF checkpoint, resumes exactly, runs DPO
    fsdp = [*SMALL_PRETRAIN, "--distributed.fsdp", "on"]
    cfg = str(REPO / "configs/pretrain_tiny.yaml")
    assert run_cli("pretrain", "--config", cfg, "--out_dir", str(tmp_path / "a"), "--save_every", "2", *fsdp) == 0
    assert _losses(tmp_path / "a") == pytest.approx(_losses(pretrained), rel=1e-5)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "a" / "final"))
    for sub in ("checkpoint-latest", "tokenizer"):
        shutil.copytree(tmp_path / "a" / sub, tmp_path / "b" / sub)
    with pytest.raises(ValueError, match="resume with distributed.fsdp=on"):
        run_cli("pretrain", "--config", cfg, "--out_dir", str(tmp_path / "b"), "--resume", "true", *SMALL_PRETRAIN,
                "--distributed.fsdp", "off")
    assert run_cli("pretrain", "--config", cfg, "--out_dir", str(tmp_path / "b"), "--resume", "true", *fsdp) == 0
    assert _losses(tmp_path / "b")[-2:] == pytest.approx(_losses(tmp_path / "a")[-2:], abs=1e-6)
    assert run_cli("dpo", "--config", str(REPO / "configs/dpo_tiny.yaml"), "--init_from", str(sft_checkpoint),
                   "--out_dir", str(tmp_path / "d"), "--n_pairs", "16", "--batch_size", "8", "--pairs", "synthetic",
                   "--distributed.fsdp", "on") == 0
    first = json.loads((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-5)  # reference computed by the sharded model
