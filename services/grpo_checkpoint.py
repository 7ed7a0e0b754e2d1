"""The GRPO job's checkpoints: ``<output_dir>/checkpoints/step_NNNNNNN`` folders and ``latest.json``.

A checkpoint is the learner's state (weights, optimizer, schedule: ``learner.actor``) plus the job's own
``extra``: progress (stage, step, version, data position), the buffered groups not trained on yet, the
prompts in flight (re-issued on resume) and the evaluations so far. ``latest.json`` is written after the
folder is complete, so a crash mid-save resumes from the previous one; the newest ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger("flywheel.grpo")


class JobCheckpoints:
    """Save, rotate and find the job's checkpoints under ``out_dir / "checkpoints"``."""

    def __init__(self, out_dir: Path, keep_last: int):
        self.root = Path(out_dir) / "checkpoints"
        self.keep_last = keep_last

    def latest(self) -> Path | None:
        """The folder ``latest.json`` points at, or None (no checkpoint, or its folder is gone)."""
        pointer = self.root / "latest.json"
        if not pointer.is_file():
            return None
        path = self.root / json.loads(pointer.read_text())["dir"]
        return path if path.is_dir() else None

    def save(self, learner: Any, experience: Any, global_step: int, extra: dict[str, Any]) -> Path:
        """Write a checkpoint at ``global_step``, acknowledge the stream, point ``latest.json`` at it."""
        tag = f"step_{global_step:07d}"
        path = self.root / tag
        learner.save_checkpoint(str(path), extra)
        experience.ack()  # Redis: what was delivered is now in the weights or in ``extra``
        (self.root / "latest.json").write_text(json.dumps({"dir": tag, "global_step": global_step}))
        kept = sorted(d for d in self.root.iterdir() if d.is_dir())
        for old in kept[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", path)
        return path
