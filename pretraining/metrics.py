"""Training metrics: JSONL always, TensorBoard when installed, W&B (offline) when configured; PNG curves.

    log = MetricsLogger("runs/sft", backends=["jsonl", "tensorboard"])
    log.log(step, {"loss": 1.2, "lr": 1e-3})
    log.close()
    plot_loss_curves("runs/sft/metrics.jsonl", "runs/sft/loss.png")

The learner and the demo reuse both.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, run_dir: str | Path, backends: Iterable[str] = ("jsonl",), *, wandb_project: str = "flywheel",
                 run_name: str | None = None, append: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a" if append else "w")
        self._tb = self._wandb = None
        backends = set(backends)
        if "tensorboard" in backends:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                log.debug("tensorboard not installed; metrics go to %s only", self.path)
        if "wandb" in backends:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, name=run_name or self.run_dir.name,
                                         dir=str(self.run_dir), mode="offline")
            except ImportError:
                log.warning("wandb is not installed; skipping the wandb backend")

    def log(self, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, "time": round(time.time(), 3)}
        for k, v in values.items():
            record[k] = float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curves(source: str | Path | list[dict[str, Any]], out_png: str | Path,
                     keys: Iterable[str] = ("loss",), title: str | None = None) -> Path | None:
    """Plot ``keys`` against ``step`` from a metrics JSONL (or records) into a PNG; None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(source) if isinstance(source, (str, Path)) else source
    keys = list(keys)
    series = {k: [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
              for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
