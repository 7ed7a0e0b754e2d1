"""Checkpoints: Hugging Face folders for models, and exact-resume training state.

A model checkpoint is a folder with ``config.json``, ``generation_config.json``, ``model.safetensors`` and
the tokenizer files (``tokenizer.json``, ``tokenizer_config.json`` with the chat template); transformers
(``AutoModelForCausalLM``) and vLLM (``LLM(model=path)``) load it unchanged. ``save_checkpoint`` writes
one from a model, ``write_hf_folder`` from a full state dict (what FSDP gathers), ``read_hf_weights``
reads the tensors back; a tied ``lm_head.weight`` is stored once, under the embedding's name.

Training state (``training_state.pt`` beside the model files: optimizer, scheduler, RNG streams, data
position, step) makes a run resume exactly; it holds only tensors and plain containers and is loaded
with ``weights_only=True``.

Before a checkpoint's weights are loaded anywhere (transformers here and in the learner, vLLM in
``evaluate``), :func:`check_weights` compares the safetensors headers with the model its ``config.json``
describes: transformers silently re-initialises a missing tensor at random and reports a wrong shape only
as "see the report above", and vLLM would fail inside its engine process, far from the caller; the check
names the tensor and the file.
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
        kept = getattr(getattr(model, "generation_config", None), "eos_token_id", None)  # e.g. Llama-3's <|eot_id|>
        eos += [i for i in (kept if isinstance(kept, list) else [kept]) if i is not None and i not in eos]
        GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=model.config.bos_token_id).save_pretrained(str(path))
    if meta is not None:
        (path / FLYWHEEL_META).write_text(json.dumps(meta, indent=2, default=str))
    return path


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack")
MODEL_FILES = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "config.json", "trainer_state.json",
               "generation_config.json"}


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the files of an HF folder that are neither weights nor configs (tokenizer, chat template, ...)."""
    import shutil

    src, dst = Path(src), Path(dst)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in MODEL_FILES and not f.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied


def has_tied_head(config) -> bool:
    """The model's ``lm_head.weight`` is its input embedding (one tensor under two names)."""
    return bool(getattr(config, "tie_word_embeddings", False))


def fill_tied_head(state: dict, config) -> dict:
    """``state`` with ``lm_head.weight`` set from the embeddings when the head is tied and absent (HF
    files store a tied tensor once)."""
    if has_tied_head(config) and "lm_head.weight" not in state:
        emb = [k for k in state if k.endswith("embed_tokens.weight")]
        if emb:
            state = {**state, "lm_head.weight": state[emb[0]]}
    return state


def drop_tied_head(state: dict, config) -> dict:
    """``state`` without a tied ``lm_head.weight`` (what HF files and inference engines expect)."""
    return {k: v for k, v in state.items() if not (has_tied_head(config) and k == "lm_head.weight")}


def write_hf_folder(state: dict, model_config, source: str | Path, out: str | Path) -> Path:
    """Write a full CPU ``state`` dict as an HF folder: ``model.safetensors``, ``config.json``, and the
    generation config and tokenizer files of the ``source`` folder."""
    import shutil

    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in drop_tied_head(state, model_config).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    model_config.save_pretrained(str(out))
    gen = Path(source) / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, out / gen.name)
    copy_tokenizer_files(source, out)
    return out


def read_hf_weights(folder: str | Path) -> dict:
    """All tensors of an HF folder's safetensors files (one file or shards), on the CPU."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


class CheckpointError(ValueError):
    """A checkpoint whose weight files do not fit its model; the message names the tensor and the file."""


def tensor_index(path: str | Path) -> dict[str, tuple[str, list[int]]]:
    """``name -> (file name, shape)`` of every tensor in a safetensors file, or in a folder's
    ``*.safetensors`` (headers only, through the one header reader, ``rollout.weight_update.read_specs``)."""
    from rollout.weight_update import WeightUpdateError, read_specs

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weight files")
    out: dict[str, tuple[str, list[int]]] = {}
    for f in files:
        try:
            out.update({name: (f.name, shape) for name, (shape, _) in read_specs(f).items()})
        except WeightUpdateError as e:  # truncated / not safetensors: the message names the file
            raise CheckpointError(str(e)) from None
    return out


def check_weights(path: str | Path) -> None:
    """Raise :class:`CheckpointError` when a tensor the model of ``config.json`` needs is missing from the
    checkpoint's safetensors files or has another shape. Reads headers only; the model is built on the
    meta device, so this costs milliseconds even for a large model. Tied weights (one tensor under
    several names, e.g. ``lm_head.weight`` with tied embeddings) need only one of their names."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint (no config.json)")
    found = tensor_index(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)))
    params = model.state_dict(keep_vars=True)
    names_of: dict[int, list[str]] = {}
    for name, t in params.items():
        names_of.setdefault(id(t), []).append(name)
    files = sorted({f for f, _ in found.values()})
    for names in names_of.values():
        present = [n for n in names if n in found]
        if not present:
            raise CheckpointError(f"{path}: tensor {names[0]!r} (shape {list(params[names[0]].shape)}) is missing "
                                  f"from {', '.join(files)}; the model in config.json needs it")
        for n in present:
            file, shape = found[n]
            if shape != list(params[n].shape):
                raise CheckpointError(f"{path / file}: tensor {n!r} has shape {shape}, the model in config.json "
                                      f"expects {list(params[n].shape)}")


def load_model(path: str | Path, dtype: str = "float32"):
    """Load an HF causal-LM folder with transformers (sdpa attention), after :func:`check_weights`."""
    import torch
    from transformers import AutoModelForCausalLM

    check_weights(path)
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


def save_training_state(path: str | Path, *, optimizer, scheduler, step: int, data_position: int = 0,
                        extra: dict[str, Any] | None = None) -> None:
    """Everything beyond the weights needed to continue a run exactly (the resume format of the
    pretraining trainers and of the RL learner).

    ``optimizer`` is an optimizer, or an already gathered state dict (FSDP: the full state from rank 0);
    ``extra`` holds plain data of the caller (tensors, numbers, strings, lists, dicts).
    """
    import torch

    optim_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    state = {"optimizer": optim_state, "scheduler": scheduler.state_dict(), "step": step,
             "data_position": data_position, "rng": rng_state(), "extra": extra or {}}
    Path(path).mkdir(parents=True, exist_ok=True)
    torch.save(state, Path(path) / TRAINING_STATE)


def load_training_state(path: str | Path) -> dict[str, Any]:
    import torch

    f = Path(path) / TRAINING_STATE
    if not f.is_file():
        raise FileNotFoundError(f"cannot resume: {f} does not exist")
    return torch.load(f, weights_only=True)
