"""Where a run's numbers go: accelerate's trackers (``--report-to tensorboard wandb mlflow aim``), our
JSONL file as one more tracker, and the progress bar.

Every value is logged under its group, ``train/…`` or ``val/…``, so TensorBoard and W&B show two sections.
On resume the JSONL file is cut back to the checkpoint step (:func:`stages.train.metrics.truncate_metrics`,
by the trainer) and TensorBoard is told to purge the later events (``purge_step``), so no curve gets
doubled points.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from stages.train.metrics import append_metrics

logger = logging.getLogger(__name__)

# The package each accelerate tracker needs.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim"}


class TrackerError(ValueError):
    """A requested tracker cannot run here."""


class JsonlTracker(GeneralTracker):
    """``logs/metrics.jsonl`` as an accelerate tracker (main process only)."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        """The configuration is the run's ``train_config.json``; nothing to add here."""

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_metrics(self.path, int(step or 0), values)


def check_trackers(report_to: list[str]) -> None:
    """Refuse a tracker whose package is missing (accelerate would drop it without a word)."""
    for name in report_to:
        package = TRACKER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise TrackerError(f"--report-to {name} needs the {package} package: pip install {package} "
                               f"(or drop {name} from --report-to)")


def trackers_for(report_to: list[str], metrics_file: Path) -> list[Any]:
    """accelerate's ``log_with``: our JSONL tracker and the names of accelerate's own."""
    check_trackers(report_to)
    return [JsonlTracker(metrics_file) if name == "jsonl" else name for name in dict.fromkeys(report_to)]


def tracker_init_kwargs(report_to: list[str], *, run_name: str, resume_step: int) -> dict[str, dict[str, Any]]:
    """Per-tracker arguments: TensorBoard purges events logged after the resumed step; W&B, MLflow and
    Aim name the run."""
    kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in report_to:
        kwargs["tensorboard"] = {"purge_step": resume_step + 1} if resume_step else {}
    if "wandb" in report_to:
        kwargs["wandb"] = {"name": run_name}
    if "mlflow" in report_to:
        kwargs["mlflow"] = {"run_name": run_name}
    if "aim" in report_to:
        kwargs["aim"] = {"experiment": run_name}
    return kwargs


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as trackers take them: lists as comma-joined text, None as ''."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out[key] = "" if value is None else value
    return out


def grouped(group: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{group}/{name}": value for name, value in values.items()}


class ProgressBar:
    """A tqdm bar over optimizer steps on the main process: epoch, the last logged loss and tokens/s, ETA."""

    def __init__(self, *, total: int, initial: int, enabled: bool) -> None:
        self._bar = None
        self._postfix: dict[str, object] = {}
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", desc="tide-train", dynamic_ncols=True)

    def update(self, *, epoch: int) -> None:
        """One optimizer step done."""
        if self._bar is not None:
            self._postfix["epoch"] = epoch
            self._bar.set_postfix(self._postfix, refresh=False)
            self._bar.update(1)

    def show(self, *, loss: float, tokens_per_s: float) -> None:
        """The last logging window's loss and throughput (read once per window, not per step)."""
        self._postfix.update(loss=f"{loss:.4g}", tok_s=f"{tokens_per_s:,.0f}")

    def write(self, text: str) -> None:
        """A log line above the bar (plain logging would tear it)."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            logger.info("%s", text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
