"""Trainer callbacks of the suite.

:class:`BestEpochTracker` records the epoch of the best validation mIoU, the HM paper's measure
of convergence speed, and writes it to ``best.json`` in the run directory at the end of fit.
:class:`TestResultsWriter` writes a test's results (with their spread over episode sets) to
``test_results.json``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from fss.atomic import write_text
from fss.distributed import run_dir
from fss.metrics import gfss_line, spread_line, summarize


class BestEpochTracker(Callback):
    """Track the epoch of the best ``monitor`` value; log it and write ``best.json`` after fit.

    After every validation (sanity check excluded) the callback reads ``monitor`` from the
    trainer's logged metrics; when it improves, ``best_epoch`` (0-based, as in checkpoint names
    ``best-epoch=N.ckpt``) and ``best_val_miou`` are updated and logged to every logger. At the
    end of fit, rank zero writes ``filename`` into ``trainer.log_dir`` (or ``default_root_dir``)::

        {"best_epoch": 7, "best_val_miou": 41.3, "epochs_run": 12, "wall_time_s": 5120.4,
         "monitor": "val/miou"}

    The state (best so far, accumulated wall time) is saved in checkpoints, so a resumed run
    keeps counting.

    Args:
        monitor: the logged metric to watch.
        mode: ``max`` (mIoU) or ``min``.
        filename: name of the JSON file written into the run directory.
    """

    def __init__(
        self, monitor: str = "val/miou", mode: Literal["max", "min"] = "max", filename: str = "best.json"
    ):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"BestEpochTracker mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.filename = filename
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.initial_value: float | None = None  # the untrained model's, from a full sanity check
        self._elapsed_before = 0.0  # wall time of earlier (resumed-from) runs
        self._start: float | None = None

    @property
    def wall_time(self) -> float:
        """Seconds of fitting so far, across resumptions."""
        running = time.monotonic() - self._start if self._start is not None else 0.0
        return self._elapsed_before + running

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking:
            # with num_sanity_val_steps: -1 the sanity check scores the untrained model on the
            # whole validation set: keep it as the baseline the trained model is compared with
            if value is not None and trainer.num_sanity_val_steps == float("inf"):
                self.initial_value = float(value)
            return
        if value is None:
            return
        value = float(value)
        if self._improved(value):
            self.best_epoch, self.best_value = trainer.current_epoch, value
        metrics = {"best_epoch": float(self.best_epoch), "best_val_miou": float(self.best_value)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _stop_clock(self) -> None:
        self._elapsed_before, self._start = self.wall_time, None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop_clock()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_clock()
        out_dir = run_dir(trainer)  # a collective under DDP: every process must ask
        if not trainer.is_global_zero:
            return
        summary = {
            "best_epoch": self.best_epoch,
            "best_val_miou": self.best_value,
            "epochs_run": trainer.current_epoch,
            "wall_time_s": round(self.wall_time, 3),
            "monitor": self.monitor,
            "initial_val_miou": self.initial_value,
        }
        path = out_dir / self.filename
        write_text(path, json.dumps(summary, indent=2) + "\n")
        before = (
            "n/a (set trainer.num_sanity_val_steps: -1)"
            if self.initial_value is None
            else f"{self.initial_value:.2f}"
        )
        best = "n/a" if self.best_value is None else f"{self.best_value:.2f} (epoch {self.best_epoch})"
        print(f"\n{self.monitor}: untrained model {before} -> best {best}; summary in {path}", flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "wall_time": self.wall_time,
            "initial_value": self.initial_value,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_epoch = state_dict["best_epoch"]
        self.best_value = state_dict["best_value"]
        self._elapsed_before = state_dict["wall_time"]
        self.initial_value = state_dict.get("initial_value")


class TestResultsWriter(Callback):
    """Writes ``test_results.json`` (test mIoU, FB-IoU, IoU per class, the spread over episode sets)
    into the test run directory and prints a one-line summary.

    Runs before the task's ``on_test_epoch_end`` (which resets the metric), reading the task's
    ``test`` metric (:class:`fss.metrics.FewShotIoU`) through :func:`fss.metrics.summarize`; class
    names come from the data module's ``class_names`` when it has them. With several test episode
    sets (``data.test_seeds``) the file also holds each set's mIoU and FB-IoU, their mean, standard
    deviation and 95% confidence interval, and the IoU of every class in every set::

        {"test_miou": 45.1, "test_fbiou": 70.2, "per_class_iou": {"person": 38.2, ...},
         "episode_sets": ["seed0", ...], "miou_per_set": [...], "fbiou_per_set": [...],
         "miou_spread": {"mean": 45.1, "std": 0.3, "ci95_low": 44.7, "ci95_high": 45.5, "n": 5},
         "fbiou_spread": {...}, "per_class_iou_per_set": {"person": [38.0, ...], ...}}

    With GFSS test episodes (``data.gfss``) it also holds ``"gfss"``: mIoU over novel, base and all
    classes, FB-IoU and pIoU, the IoU per class, the merge rule and threshold
    (:meth:`fss.task.FewShotSegmentationTask.gfss_summary`)::

        {..., "gfss": {"merge": "final", "merge_tau": 0.9, "miou_n": 40.1, "miou_b": 65.2, "miou_t": 58.9,
                       "fbiou": 70.3, "piou": 55.0, "per_class_iou": {...}, "novel_classes": [...]}}

    In FS-CS mode (``model.fscs``) it holds ``test_er``, ``test_miou`` and ``per_class_iou``
    (:meth:`fss.task.FewShotSegmentationTask.fscs_summary`).

    The CLI adds it to every run (``--test_results.filename`` renames the file).

    Args:
        filename: name of the JSON file written into ``trainer.log_dir``.
    """

    def __init__(self, filename: str = "test_results.json") -> None:
        super().__init__()
        self.filename = filename

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metric = pl_module.metric("test")  # FewShotSegmentationTask.metric
        labels = getattr(pl_module, "test_set_labels", None)
        names = list(getattr(trainer.datamodule, "class_names", []) or [])
        # a collective under DDP: every process calls it
        if getattr(pl_module.hparams, "fscs", False):
            summary = pl_module.fscs_summary("test", names)
            line = f"test ER {summary['test_er']:.2f}, mIoU {summary['test_miou']:.2f}"
        else:
            summary = summarize(metric, labels, names)
            line = spread_line(summary)
            gfss = pl_module.gfss_summary() if hasattr(pl_module, "gfss_summary") else None
            if gfss is not None:  # GFSS test episodes (data.gfss)
                summary["gfss"] = gfss
                line = f"{gfss_line(gfss)}; FS-S on the novel class: {line}"
        out_dir = run_dir(trainer)  # likewise
        if not trainer.is_global_zero:
            return
        path = out_dir / self.filename
        write_text(path, json.dumps(_json_safe(summary), indent=2) + "\n")  # never a half-written file
        print(f"\n{line}; details in {path}", flush=True)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no NaN), floats rounded to 4 places."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    return value
