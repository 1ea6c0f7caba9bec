"""BestEpochTracker: best epoch of val/miou, sanity check ignored, best.json, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fss.callbacks import BestEpochTracker

#: val/miou reported at the end of each epoch; the sanity check reports 99 (must be ignored)
SCHEDULE = [10.0, 30.0, 20.0, 25.0]


class ScriptedModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        value = 99.0 if self.trainer.sanity_checking else SCHEDULE[self.current_epoch]
        self.log("val/miou", value)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def data() -> DataLoader:
    return DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=1)


def fit(
    root: Path, max_epochs: int, ckpt_path: str | None = None, logger=False, sanity_steps: int = 1
) -> BestEpochTracker:
    tracker = BestEpochTracker()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=[tracker],
        default_root_dir=root,
        num_sanity_val_steps=sanity_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(ScriptedModule(), data(), data(), ckpt_path=ckpt_path)
    if ckpt_path is None:
        trainer.save_checkpoint(root / "end.ckpt")
    return tracker


def test_best_epoch_ignores_sanity_check_and_writes_json(tmp_path: Path) -> None:
    tracker = fit(tmp_path, max_epochs=3)
    assert (tracker.best_epoch, tracker.best_value) == (1, 30.0)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["best_epoch"] == 1 and best["best_val_miou"] == 30.0 and best["epochs_run"] == 3
    assert best["wall_time_s"] > 0


def test_best_values_are_logged(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="")
    fit(tmp_path, max_epochs=2, logger=logger)
    lines = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    best = [(float(r["best_epoch"]), float(r["best_val_miou"])) for r in rows if r.get("best_epoch")]
    assert best == [(0.0, 10.0), (1.0, 30.0)]


def test_resumed_run_keeps_the_best_so_far(tmp_path: Path) -> None:
    first = fit(tmp_path, max_epochs=2)  # epochs 0, 1: best 30 at epoch 1
    resumed = fit(tmp_path, max_epochs=4, ckpt_path=str(tmp_path / "end.ckpt"))  # epochs 2, 3: 20, 25
    assert (resumed.best_epoch, resumed.best_value) == (1, 30.0)
    assert resumed.wall_time >= first.wall_time
    assert json.loads((tmp_path / "best.json").read_text())["epochs_run"] == 4


def test_full_sanity_check_is_the_untrained_baseline(tmp_path: Path, capsys) -> None:
    """With num_sanity_val_steps=-1 the sanity check scores the untrained model: kept and printed."""
    tracker = fit(tmp_path, max_epochs=2, sanity_steps=-1)
    assert tracker.initial_value == 99.0 and tracker.best_value == 30.0
    summary = json.loads((tmp_path / "best.json").read_text())
    assert summary["initial_val_miou"] == 99.0
    assert "untrained model 99.00 -> best 30.00 (epoch 1)" in capsys.readouterr().out


def test_partial_sanity_check_is_no_baseline(tmp_path: Path) -> None:
    tracker = fit(tmp_path, max_epochs=1, sanity_steps=1)
    assert tracker.initial_value is None
    assert json.loads((tmp_path / "best.json").read_text())["initial_val_miou"] is None
