"""Training metrics on disk: ``logs/metrics.jsonl`` (one JSON line per logged step), cut back to the
checkpoint step on resume, and the loss-curve PNG with one panel per loss term.

In ``metrics.jsonl`` training values keep their plain names (``loss``, ``loss_ce``, ``lr``, ...) and
validation values are prefixed ``val/``; the trackers (:mod:`stages.train.tracking`) get every value under
its group (``train/loss``, ``val/loss``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from cache_schema.files import atomic_write_text

logger = logging.getLogger(__name__)

TRAIN_GROUP = "train/"
VAL_GROUP = "val/"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Keep only the records of steps <= ``step`` (a resumed run logs the later steps again); returns how
    many records were dropped. A last line cut by a kill is dropped with them."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if int(record.get("step", 0)) <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        logger.info("%s: dropped %d records after step %d (they are logged again)", path, dropped, step)
    return dropped


def jsonl_record(values: dict[str, Any]) -> dict[str, Any]:
    """A tracker's grouped values as a ``metrics.jsonl`` record (training values without their group)."""
    return {name.removeprefix(TRAIN_GROUP): value for name, value in values.items()}


def append_metrics(path: str | os.PathLike, step: int, values: dict[str, Any]) -> None:
    with Path(path).open("a") as handle:
        handle.write(json.dumps({"step": step, **jsonl_record(values)}, sort_keys=True) + "\n")


def _loss_series(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for name, value in record.items():
            term = name.removeprefix(VAL_GROUP)
            if term.startswith("loss") and isinstance(value, (int, float)) and math.isfinite(value):
                steps, values = series.setdefault(name, ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    return series


def plot_loss_curve(jsonl_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """One panel per loss term (total, CE, each distillation term: their scales differ by orders of
    magnitude), training and validation in the same panel. Returns the PNG path, or None if there is
    nothing to plot."""
    series = _loss_series(read_metrics(jsonl_path))
    if not series:
        logger.warning("no loss values in %s: no loss curve written", jsonl_path)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = sorted({name.removeprefix(VAL_GROUP) for name in series}, key=lambda t: (t != "loss", t))
    fig, axes = plt.subplots(len(terms), 1, figsize=(7, 2.4 * len(terms)), sharex=True, squeeze=False)
    for ax, term in zip(axes[:, 0], terms, strict=True):
        for name, label in ((term, "train"), (VAL_GROUP + term, "validation")):
            if name in series:
                steps, values = series[name]
                ax.plot(steps, values, label=label, linewidth=1.0, marker="o" if label == "validation" else None,
                        markersize=3)
        ax.set_ylabel(term)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("optimizer step")
    axes[0, 0].set_title("tide-train losses (one panel per term)")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path

