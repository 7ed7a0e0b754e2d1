"""The ``flywheel`` command line: one subcommand per user-facing job.

Every subcommand takes ``--config FILE`` (YAML or TOML) plus dotted overrides
(``--optim.lr 1e-3``) and validates them against the job's typed config before any heavy
import happens. ``flywheel --help`` and ``flywheel <cmd> --help`` import no torch, vllm or ray.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    help: str
    config: str
    """``module:Class`` of the job's pydantic config (imports no torch)."""
    run: str
    """``module:function`` taking the validated config; returns an exit code or None."""
    default_config: str | None = None
    """Config file used when ``--config`` is not given."""


COMMANDS: dict[str, Command] = {
    "pretrain": Command("pretrain a model from scratch (multi-stage mixtures, packing, WSD)",
                        "pretraining.config:PretrainConfig", "pretraining.pretrain:main",
                        "configs/pretrain_tiny.yaml"),
    "sft": Command("supervised fine-tuning on chat data (assistant-only loss, BFD packing)",
                   "pretraining.config:SFTConfig", "pretraining.sft:main", "configs/sft_tiny.yaml"),
    "dpo": Command("preference optimisation (sigmoid / ipo / apo_zero)",
                   "pretraining.config:DPOConfig", "pretraining.dpo:main", "configs/dpo_tiny.yaml"),
    "merge": Command("average N checkpoints of one architecture (weight ensembling)",
                     "pretraining.config:MergeConfig", "pretraining.merge:main"),
    "eval": Command("held-out accuracy with vLLM sampling and the verifier (greedy, avg@k, pass@k)",
                    "pretraining.config:EvalConfig", "pretraining.evaluate:main"),
    "grpo": Command("multi-stage asynchronous GRPO on Ray (the `ray job submit` entrypoint)",
                    "services.job_config:GRPOJobConfig", "services.grpo_job:main",
                    "configs/grpo_tiny.yaml"),
    "serve-reward": Command("reward verifier microservice (HTTP + gRPC)",
                            "services.reward_server:RewardServerConfig", "services.reward_server:main",
                            "configs/serve_reward.yaml"),
    "serve-rollout": Command("rollout service API (OpenAI-compatible HTTP + gRPC) over vLLM workers",
                             "services.rollout_server:RolloutServerConfig", "services.rollout_app:main",
                             "configs/serve_rollout.yaml"),
    "demo": Command("the embedded default end to end: tokenizer -> pretrain -> SFT -> DPO -> GRPO -> report",
                    "services.demo:DemoConfig", "services.demo:main", "configs/demo.yaml"),
}


def _resolve(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _default_path(rel: str | None) -> str | None:
    """Default configs live in the repo's ``configs/``; find them from any working directory."""
    from pathlib import Path

    if rel is None or Path(rel).exists():
        return rel
    return str(Path(__file__).resolve().parents[1] / rel)


def _subcommand_help(name: str, cmd: Command) -> str:
    from services.config import describe_fields

    lines = [f"usage: flywheel {name} [--config FILE] [--field.path VALUE ...]", "", cmd.help, ""]
    if cmd.default_config:
        lines.append(f"default config: {cmd.default_config}")
    lines += ["", "fields (override any with --dotted.name VALUE):"]
    lines += describe_fields(_resolve(cmd.config))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flywheel",
        description="Flywheel: RL for LLM reasoning (vLLM rollouts, math verifier, FSDP2 learner on Ray).",
        epilog="Run `flywheel <command> --help` for a command's config fields.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, cmd in COMMANDS.items():
        s = sub.add_parser(name, help=cmd.help, add_help=False)
        s.add_argument("-h", "--help", action="store_true")
        s.add_argument("--config", help="YAML or TOML config file")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as e:  # --help / usage errors: argparse has printed the message
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 0 if not rest else 2
    cmd = COMMANDS[args.command]
    if args.help:
        print(_subcommand_help(args.command, cmd))
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from services.config import ConfigError, load_config

    try:
        cfg = load_config(_resolve(cmd.config), args.config or _default_path(cmd.default_config), rest)
    except ConfigError as e:
        print(f"flywheel {args.command}: {e}", file=sys.stderr)
        return 2
    from pretraining.chat import ChatTemplateError  # these three are light: no torch at import
    from pretraining.checkpoint import CheckpointError
    from pretraining.dataset_files import DataFileError
    from rollout.engine_startup import EngineStartError  # light too

    try:
        code = _resolve(cmd.run)(cfg)
    except (CheckpointError, ChatTemplateError, DataFileError, EngineStartError) as e:  # one clear line
        print(f"flywheel {args.command}: {e}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
