"""Fault-injection callbacks for the reliability tests (loaded by ``fss`` subprocesses by class path).

Each fires once, at a given epoch and training batch, so a test can interrupt a real run exactly
where it wants: :class:`SignalAt` sends a signal to the process itself (Ctrl+C is SIGINT, a cluster
kill is SIGKILL), :class:`StopAt` stops the run as ``max_time`` does, :class:`TruncateFilesAt` corrupts dataset files under a running fit, and
:class:`StallOnRank` makes one rank wait in a collective the others never join (a deadlock, which
the DDP timeout must turn into an error).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class SignalAt(Callback):
    """Send ``signum`` (a name such as ``SIGINT``) to this process after training batch ``batch`` of ``epoch``."""

    def __init__(self, epoch: int, batch: int, signum: str = "SIGINT") -> None:
        self.epoch, self.batch, self.signum = epoch, batch, getattr(signal, signum)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        batch_idx = args[-1]
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and trainer.is_global_zero:
            os.kill(os.getpid(), self.signum)
            time.sleep(5)  # the signal arrives while this sleeps (SIGKILL never returns)


class StopAt(Callback):
    """Ask the trainer to stop after training batch ``batch`` of ``epoch``, as ``trainer.max_time`` does
    (Lightning's Timer sets ``trainer.should_stop`` at a batch end when the time is up)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch and args[-1] == self.batch:
            trainer.should_stop = True


class TruncateFilesAt(Callback):
    """At the start of training epoch ``epoch``, cut every file in ``paths`` to a third of its bytes."""

    def __init__(self, epoch: int, paths: list[str]) -> None:
        self.epoch, self.paths = epoch, [Path(p) for p in paths]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            for path in self.paths:
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 3])


class StallRank(Callback):
    """Rank ``rank`` stops for ``seconds`` after training batch ``batch`` of epoch 0 (a stuck process):
    the other ranks wait for it in their next collective."""

    def __init__(self, rank: int = 0, batch: int = 0, seconds: float = 600.0) -> None:
        self.rank, self.batch, self.seconds = rank, batch, seconds

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == 0 and args[-1] == self.batch and trainer.global_rank == self.rank:
            time.sleep(self.seconds)
