"""Typed configuration: load a pydantic model from YAML/TOML plus dotted command-line overrides.

Every component owns its config class (``rewards.config``, ``pretraining.config``, ``rollout.config``,
``learner.config``, ``services.job_config``); this module only loads them. Imports no torch.

    cfg = load_config(PretrainConfig, "configs/pretrain_tiny.yaml", ["--optim.lr", "1e-3"])

An invalid value raises :class:`ConfigError` whose message names the field, the value and the rule,
e.g. ``learner.optim.lr = -1.0: Input should be greater than 0``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override that does not validate; the message is meant for the user."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ``["--learner.optim.lr", "1e-6", "--stages.0.steps=3"]`` into a nested dict.

    Values are parsed as YAML scalars/lists (``1e-6`` -> float, ``true`` -> bool, ``[1,2]`` -> list);
    a numeric path component indexes into a list.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.field VALUE")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and not _is_number(args[i + 1])):
                raise ConfigError(f"override --{key} needs a value (a switch too: --{key} true)")
            value = args[i + 1]
            i += 1
        i += 1
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        parsed = _yaml_float(value, parsed)
        _set_path(out, key.replace("-", "_").split("."), parsed)
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _yaml_float(raw: str, parsed: Any) -> Any:
    """YAML 1.1 reads ``1e-6`` as a string; read it as the float a user means."""
    if isinstance(parsed, str) and _is_number(raw):
        return float(raw)
    return parsed


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)} conflicts with another override")
    node[path[-1]] = value


ALTERNATIVES = (frozenset({"data_file", "difficulties"}),)
"""Fields that are alternatives to each other within one section (a GRPO stage, ``eval``): an override that
sets one of them drops the others the file gave, so ``--stages.0.data_file x.parquet`` replaces the config
file's ``difficulties`` of that stage without a ``--stages.0.difficulties null``."""


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base``. A dict keyed by digits indexes into a list."""
    out = dict(base)
    for k, v in over.items():
        for group in ALTERNATIVES:
            if k in group and v is not None:
                for other in group - {k} - over.keys():
                    out.pop(other, None)
        cur = out.get(k)
        if isinstance(v, dict) and isinstance(cur, list) and all(x.isdigit() for x in v):
            lst = list(cur)
            for idx, sub in v.items():
                j = int(idx)
                if j >= len(lst):
                    raise ConfigError(f"override {k}.{idx}: {k} has only {len(lst)} entries")
                lst[j] = merge(lst[j], sub) if isinstance(lst[j], dict) and isinstance(sub, dict) else sub
            out[k] = lst
        elif isinstance(v, dict) and isinstance(cur, dict):
            out[k] = merge(cur, v)
        else:
            out[k] = v
    return out


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem: ``<source>: <dotted.field> = <value>: <rule>``."""
    lines = [f"invalid {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        shown = "(missing)" if e["type"] == "missing" else repr(value)
        if isinstance(value, dict) and e["type"] != "missing":
            shown = "{...}"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see --help for the fields)"
        lines.append(f"  {loc} = {shown}: {msg}")
    return "\n".join(lines)


def validate(cls: type[M], data: dict[str, Any], source: str = "config") -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(cls: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """Load ``cls`` from an optional file, then apply ``--dotted.key value`` overrides, then validate."""
    data = read_config_file(path) if path else {}
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return validate(cls, data, source=str(path) if path else "config")


def _bound(meta: Any) -> str:
    """``Ge(ge=1)`` -> ``ge 1`` (annotated_types constraints are slotted dataclasses)."""
    import dataclasses

    if not dataclasses.is_dataclass(meta):
        return ""
    return ", ".join(f"{f.name} {getattr(meta, f.name)}" for f in dataclasses.fields(meta))


def describe_fields(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Human-readable list of every field (dotted name, type, default, docstring) for ``--help``."""
    rows: list[str] = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        dotted = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, dotted + "."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = "{...}"
        elif isinstance(default, list) and default and isinstance(default[0], BaseModel):
            default = f"[{len(default)} entries]"
        bounds = [_bound(m) for m in field.metadata if _bound(m)]
        doc = (field.description or "").strip().replace("\n", " ")
        extra = f" [{', '.join(bounds)}]" if bounds else ""
        rows.append(f"  --{dotted} (default: {default!r}){extra}\n      {doc}")
    return rows
