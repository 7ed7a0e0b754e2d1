"""MetricsLogger writes JSONL; plot_loss_curves writes a PNG."""

from __future__ import annotations

import json

from pretraining.metrics import MetricsLogger, plot_loss_curves, read_metrics


def test_jsonl_records_and_png_curve(tmp_path):
    with MetricsLogger(tmp_path, backends=["jsonl", "tensorboard"]) as log:
        for step in range(1, 6):
            log.log(step, {"loss": 1.0 / step, "stage": "sft"})
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and recs[1]["loss"] == 0.5 and recs[0]["stage"] == "sft"
    json.dumps(recs)
    png = plot_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curves(recs, tmp_path / "none.png", keys=["missing"]) is None
