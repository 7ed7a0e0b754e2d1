"""``flywheel merge``: average N checkpoints of one architecture (Instella's weight ensembling).

Refuses inputs whose architecture (config), tensor names/shapes or tokenizer differ, naming the first
difference. The output folder is a complete HF checkpoint (config, generation config, tokenizer and chat
template from the first input; each tensor keeps its dtype, bf16 or fp32; a sharded input is read whole
and written as one ``model.safetensors``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from pretraining.config import MergeConfig

log = logging.getLogger(__name__)

_IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures_version"}
_COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
           "added_tokens.json")


class MergeError(ValueError):
    """Checkpoints that cannot be averaged."""


def _architecture(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise MergeError(f"{path} is not a checkpoint folder (no config.json)")
    return {k: v for k, v in json.loads(f.read_text()).items() if k not in _IGNORED_CONFIG_KEYS}


def _vocabulary(path: Path):
    """What makes two tokenizers the same for merging: the token -> id map, the BPE merges and the added
    tokens of ``tokenizer.json`` (a re-save by another transformers version may rewrite its
    normalizer or pre-tokenizer settings without changing a single id), or None without that file."""
    f = path / "tokenizer.json"
    if not f.is_file():
        return None
    tok = json.loads(f.read_text())
    model = tok.get("model") or {}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return (model.get("vocab"), merges, sorted((t["id"], t["content"]) for t in tok.get("added_tokens") or []))


def _load_state(path: Path) -> dict:
    """Every tensor of a checkpoint folder (one ``model.safetensors`` or a sharded checkpoint's files)."""
    from pretraining.checkpoint import read_hf_weights

    try:
        return read_hf_weights(path)
    except FileNotFoundError:
        raise MergeError(f"{path}: no *.safetensors weight files") from None


def merge_checkpoints(paths: list[str | Path], out_dir: str | Path, weights: list[float] | None = None) -> Path:
    """Weighted average (uniform by default) of the checkpoints' tensors, written to ``out_dir``."""
    import torch
    from safetensors.torch import save_file

    paths = [Path(p) for p in paths]
    if not paths:
        raise MergeError("no checkpoints to merge")
    weights = [1.0] * len(paths) if weights is None else list(weights)
    if len(weights) != len(paths) or sum(weights) <= 0:
        raise MergeError(f"{len(weights)} weights for {len(paths)} checkpoints (need one each, positive sum)")
    weights = [w / sum(weights) for w in weights]
    base_arch = _architecture(paths[0])
    base_tok = _vocabulary(paths[0])
    merged: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for i, (p, w) in enumerate(zip(paths, weights)):
        arch = _architecture(p)
        diff = sorted(k for k in set(arch) | set(base_arch) if arch.get(k) != base_arch.get(k))
        if diff:
            k = diff[0]
            raise MergeError(f"cannot merge {p} with {paths[0]}: config differs in {k!r} "
                             f"({arch.get(k)!r} vs {base_arch.get(k)!r}); all checkpoints must share one architecture")
        if _vocabulary(p) != base_tok:
            raise MergeError(f"cannot merge {p} with {paths[0]}: their tokenizers differ")
        state = _load_state(p)
        if i == 0:
            for k, v in state.items():
                merged[k], dtypes[k] = v.float() * w, v.dtype
            continue
        if set(state) != set(merged):
            extra = sorted(set(state) ^ set(merged))
            raise MergeError(f"cannot merge {p} with {paths[0]}: tensor names differ (e.g. {extra[0]!r})")
        for k, v in state.items():
            if v.shape != merged[k].shape:
                raise MergeError(f"cannot merge {p} with {paths[0]}: {k} has shape {tuple(v.shape)} vs "
                                 f"{tuple(merged[k].shape)}")
            merged[k] += v.float() * w
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtypes[k]).contiguous() for k, v in merged.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    for name in _COPIED:
        if (paths[0] / name).is_file():
            shutil.copyfile(paths[0] / name, out / name)
    (out / "flywheel.json").write_text(json.dumps({"job": "merge", "inputs": [str(p) for p in paths],
                                                   "weights": weights}, indent=2))
    return out


def main(cfg: MergeConfig) -> int:
    try:
        out = merge_checkpoints(cfg.checkpoints, cfg.out_dir, cfg.weights)
    except MergeError as e:
        print(f"flywheel merge: {e}", flush=True)
        return 2
    print(f"merged {len(cfg.checkpoints)} checkpoints -> {out}", flush=True)
    return 0
