"""Checkpoints: Hugging Face folders for models, and exact-resume training state.

A model checkpoint is a folder with ``config.json``, ``generation_config.json``, ``model.safetensors`` and
the tokenizer files (``tokenizer.json``, ``tokenizer_config.json`` with the chat template); transformers
(``AutoModelForCausalLM``) and vLLM (``LLM(model=path)``) load it unchanged.

Training state (``training_state.pt`` beside the model files: optimizer, scheduler, RNG streams, data
position, step) makes a run resume exactly; it holds only tensors and plain containers and is loaded
with ``weights_only=True``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TRAINING_STATE = "training_state.pt"
FLYWHEEL_META = "flywheel.json"


def save_checkpoint(model, tokenizer, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (as float32 safetensors) and ``tokenizer`` to an HF folder at ``path``."""
    from transformers import GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None and model.config.vocab_size < len(tokenizer):
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}: they do not belong together")
    model.save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        from pretraining.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, path)
        eos = [tokenizer.eos_token_id] + ([tokenizer.pad_token_id] if tokenizer.pad_token_id is not None else [])
        GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=model.config.bos_token_id).save_pretrained(str(path))
    if meta is not None:
        (path / FLYWHEEL_META).write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_model(path: str | Path, dtype: str = "float32"):
    """Load an HF causal-LM folder with transformers (sdpa attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint (no config.json)")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), attn_implementation="sdpa")


def load_checkpoint(path: str | Path, dtype: str = "float32"):
    """``(model, tokenizer)`` from a checkpoint folder; refuses a tokenizer larger than the model's vocab."""
    from pretraining.tokenizer import load_tokenizer

    model, tok = load_model(path, dtype), load_tokenizer(path)
    if len(tok) > model.config.vocab_size:
        raise ValueError(f"{path}: tokenizer has {len(tok)} tokens, model vocab_size is {model.config.vocab_size}")
    return model, tok


def read_meta(path: str | Path) -> dict[str, Any]:
    f = Path(path) / FLYWHEEL_META
    return json.loads(f.read_text()) if f.is_file() else {}


def rng_state() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    v = state["python"]
    random.setstate((v[0], tuple(v[1]), v[2]))


def save_training_state(path: str | Path, *, optimizer, scheduler, step: int, data_position: int,
                        extra: dict[str, Any] | None = None) -> None:
    """Everything beyond the weights needed to continue a run exactly."""
    import torch

    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
             "data_position": data_position, "rng": rng_state(), "extra": extra or {}}
    Path(path).mkdir(parents=True, exist_ok=True)
    torch.save(state, Path(path) / TRAINING_STATE)


def load_training_state(path: str | Path) -> dict[str, Any]:
    import torch

    f = Path(path) / TRAINING_STATE
    if not f.is_file():
        raise FileNotFoundError(f"cannot resume: {f} does not exist")
    return torch.load(f, weights_only=True)
