"""The versioned weight update: one record from the learner to every engine, validated once.

A :class:`WeightUpdate` carries an int ``version`` (only ever grows; vLLM's string label is made from
it at vLLM's boundary, ``rollout.weight_apply``) and the new weights by one transport:

- ``tensors``: a ``{name: tensor}`` dict, or a Ray ``ObjectRef`` of one (the object store: one
  ``ray.put`` fans out to every worker);
- ``files``: safetensors files on storage the engine can read (the rollout service's ``/v1/weights``);
- ``collective``: a handle of a broadcast the engine receives from the learner
  (:mod:`rollout.weight_sync`); ``specs`` then says what will arrive.

``specs`` (name -> shape, safetensors dtype) is derived from the tensors or file headers when not given.

One check of each kind lives here and nowhere else: :func:`check_version` (stale or malformed
version), :func:`read_specs` (the safetensors header reader), :func:`validate_specs` (names, shapes,
dtypes against the served model). Pure: imports no torch or Ray at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_VERSION = 2**53 - 1
"""Largest version accepted (exact in JSON numbers, so every client reads it back unchanged)."""

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
"""Safetensors dtypes a weight may have."""

TensorSpec = tuple[list[int], str]
"""(shape, safetensors dtype name such as ``"F32"``)."""


class WeightUpdateError(ValueError):
    """A weight update that was rejected; the engine keeps its previous weights and version."""


class StaleWeightUpdate(WeightUpdateError):
    """The engine already holds ``version`` (or a newer one): nothing to apply.

    Carries both versions, so a sender can tell "already up to date" from a real fault."""

    def __init__(self, version: int, current: int) -> None:
        super().__init__(version, current)  # args survive pickling (Ray re-raises it in the caller)
        self.version, self.current = version, current

    def __str__(self) -> str:
        return f"stale weight update: version {self.version} <= current version {self.current}"


def check_version(version: Any, current: int) -> int:
    """The one version check: ``version`` must be an int in ``(current, MAX_VERSION]``; returns it."""
    if not isinstance(version, int) or isinstance(version, bool):
        raise WeightUpdateError(f"weight version must be an int, got {type(version).__name__}")
    if version > MAX_VERSION:
        raise WeightUpdateError(f"weight version {version} is above the largest accepted ({MAX_VERSION})")
    if version <= current:
        raise StaleWeightUpdate(version, current)
    return version


def stale_cause(err: BaseException) -> StaleWeightUpdate | None:
    """The :class:`StaleWeightUpdate` behind ``err`` (as raised here, or wrapped by Ray), else None."""
    if isinstance(err, StaleWeightUpdate):
        return err
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, StaleWeightUpdate) else None


def vllm_label(version: int) -> str:
    """vLLM's weight-version label for ``version`` (vLLM stamps a string on every step)."""
    return str(version)


def from_vllm_label(label: str | int) -> int:
    """The int version behind a label of :func:`vllm_label`."""
    return int(label)


_TORCH_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def tensor_specs(tensors: Any) -> dict[str, TensorSpec]:
    """Specs of a ``{name: tensor}`` dict; a value that is not a floating-point tensor is an error."""
    import torch

    if not isinstance(tensors, dict) or not tensors:
        raise WeightUpdateError("weight update must be a non-empty dict name -> tensor")
    out: dict[str, TensorSpec] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise WeightUpdateError(f"weight {name!r} is a {type(t).__name__}, not a torch.Tensor")
        dtype = _TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise WeightUpdateError(f"weight {name!r} has dtype {t.dtype}; expected a floating-point tensor")
        out[str(name)] = (list(t.shape), dtype)
    return out


def read_specs(path: str | Path) -> dict[str, TensorSpec]:
    """The safetensors header reader: specs of a file, or of a folder's ``*.safetensors`` in name
    order (headers only, no tensor is read). An unreadable file is a :class:`WeightUpdateError`
    naming it."""
    from safetensors import safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise WeightUpdateError(f"{path}: no *.safetensors weight files")
    out: dict[str, TensorSpec] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for name in fh.keys():
                    sl = fh.get_slice(name)
                    out[name] = (list(sl.get_shape()), str(sl.get_dtype()))
        except Exception as e:  # noqa: BLE001 - truncated / not safetensors: say which file
            raise WeightUpdateError(f"{f}: not a readable safetensors file ({e})") from None
    return out


def model_specs(model: str | Path) -> dict[str, TensorSpec]:
    """Specs of a local checkpoint folder, or {} for a hub id (nothing to compare with)."""
    p = Path(model)
    return read_specs(p) if p.is_dir() and any(p.glob("*.safetensors")) else {}


def validate_specs(specs: dict[str, TensorSpec], expected: dict[str, TensorSpec], complete: bool = False) -> None:
    """The one validation of an update's tensors: floating-point dtypes, and with ``expected`` (the
    served model's specs) only known names of the expected shapes; ``complete``: every expected
    tensor present. Raises :class:`WeightUpdateError` naming the first bad tensor."""
    if not specs:
        raise WeightUpdateError("weight update must carry at least one tensor")
    for name, (shape, dtype) in specs.items():
        if dtype not in FLOAT_DTYPES:
            raise WeightUpdateError(f"weight {name!r} has dtype {dtype}; expected a floating-point tensor")
        if not expected:
            continue
        if name not in expected:
            raise WeightUpdateError(f"unknown weight {name!r}: the model has no such parameter")
        if list(shape) != list(expected[name][0]):
            raise WeightUpdateError(f"weight {name!r} has shape {list(shape)}, the model expects "
                                    f"{list(expected[name][0])}")
    if complete and expected:
        missing = sorted(set(expected) - set(specs))
        if missing:
            raise WeightUpdateError(f"weight {missing[0]!r} is missing ({len(missing)} of the model's "
                                    f"{len(expected)} tensors missing); an update must carry every tensor")


@dataclass
class WeightUpdate:
    """One versioned weight update (exactly one of ``tensors``, ``files``, ``collective`` is set)."""

    version: int
    """Policy version the weights are (an int that only grows)."""
    tensors: Any = None
    """``{name: tensor}`` or a Ray ``ObjectRef`` of it (object-store transport)."""
    files: list[str] | None = None
    """Safetensors files the engine can read (shared storage)."""
    collective: dict[str, Any] | None = None
    """Handle of a broadcast the engine receives (collective transport, :mod:`rollout.weight_sync`)."""
    specs: dict[str, TensorSpec] | None = None
    """Names -> (shape, dtype) of what the update carries; derived from the payload when None."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Sender-side numbers (e.g. bytes, seconds to produce); informational only."""

    def __post_init__(self) -> None:
        carried = [k for k in ("tensors", "files", "collective") if getattr(self, k) is not None]
        if len(carried) != 1:
            raise WeightUpdateError(f"a weight update carries exactly one of tensors, files, collective; got "
                                    f"{carried or 'none'}")

    @property
    def transport(self) -> str:
        return "tensors" if self.tensors is not None else "files" if self.files is not None else "collective"

    def resolved(self, tensors: dict) -> WeightUpdate:
        """The same update with ``tensors`` fetched (an ObjectRef replaced by its dict)."""
        return WeightUpdate(self.version, tensors=tensors, specs=self.specs, meta=self.meta)

    def payload_specs(self) -> dict[str, TensorSpec]:
        """Specs of what actually arrives: from the tensors themselves, the file headers, or ``specs``."""
        if self.tensors is not None:
            return tensor_specs(self.tensors)
        if self.files is not None:
            out: dict[str, TensorSpec] = {}
            for f in self.files:
                out.update(read_specs(f))
            return out
        if not self.specs:
            raise WeightUpdateError("a collective weight update must say what it carries (specs)")
        return dict(self.specs)

    def validate(self, current: int, expected: dict[str, TensorSpec]) -> dict[str, TensorSpec]:
        """The whole check, once, before anything changes: version, then every tensor; returns the specs."""
        check_version(self.version, current)
        specs = self.payload_specs()
        validate_specs(specs, expected)
        return specs
