"""Checkpoints: ``last.ckpt`` that is always the last finished epoch, readable errors, config checks.

* :class:`RunCheckpoint`: the ``checkpoint`` callback of every fss run. Lightning's
  ``ModelCheckpoint`` keeps the best checkpoints (``best-epoch=N.ckpt``) as before, but ``last.ckpt``
  no longer depends on the monitored metric improving (with pytorch-lightning 2.6 ``save_last``
  writes it only when a top-k checkpoint is written, so it could be many epochs old). Here it is
  written

  - when an epoch has completely finished (its training, validation, logging and learning-rate
    step), i.e. at the start of the next epoch, so a resumed run starts that next epoch exactly;
  - at the end of training, whatever ended it (``max_epochs``, early stopping, a ``max_time``
    stop: Lightning ends the epoch early, validates, and the stopped epoch counts as finished).

  It is never written after an error or an interruption (Ctrl+C, SIGTERM, a kill), so it always
  holds a finished epoch. The loggers are flushed before each ``last.ckpt``, so ``metrics.csv`` has
  every row up to it. The run directory and the W&B run id are stored in the checkpoint
  (``checkpoint["fss_run"]``) so that a resumed fit continues in the same directory and W&B run.
* :func:`load_checkpoint`: read a checkpoint with an error that names the file and says what to do
  (missing, truncated, not a checkpoint).
* :func:`reconcile_hparams`: how the checkpoint's hyperparameters and the config/command line are
  combined (see docs/reliability.md):

  - a value the config or command line does not set comes from the checkpoint;
  - a *network-describing* value set explicitly to something else than the checkpoint's is an
    error naming both values (the weights would not fit, or would silently mean another model);
    every hyperparameter describes the network except those the task lists in
    ``FewShotSegmentationTask.RUN_SETTINGS`` (learning rate, k-shot rule, ...);
  - a run setting set explicitly wins over the checkpoint's value, with a warning when they differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from fss.distributed import run_dir
from fss.errors import FSSError

#: Lightning's special ``ckpt_path`` values (not files)
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class CheckpointError(FSSError):
    """A checkpoint cannot be used: missing, unreadable, or made for another network than the config's."""


# ------------------------------------------------------------------------------------------ reading
def load_checkpoint(path: str | Path, option: str = "--ckpt_path") -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU (memory-mapped: only what is read is loaded).

    Raises:
        CheckpointError: naming ``path`` and ``option``: no such file, truncated/corrupt, not a
            Lightning checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.name == "last.ckpt":
            hint = " (a run writes last.ckpt when its first epoch has finished)"
        raise CheckpointError(f"{option} {path}: no such file{hint}")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # not a zip-format file (a legacy torch.save, or not a checkpoint): read it whole
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure means the same to the user
        reason = str(err)
        if "central directory" in reason or "EOF" in reason or "truncated" in reason.lower():
            what = "the file is truncated (an interrupted copy or write)"
        else:
            what = f"not a readable PyTorch checkpoint ({type(err).__name__})"
        raise CheckpointError(
            f"{option} {path}: cannot load the checkpoint: {what}. Use another checkpoint of the run "
            "(checkpoints/best-*.ckpt), or copy it again"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{option} {path} is not a Lightning checkpoint (no 'state_dict'); published or reference "
            "network weights go to --model.pretrained instead"
        )
    return ckpt


# ------------------------------------------------------------------------------------------ hparams
def to_plain(value: Any) -> Any:
    """``value`` with jsonargparse Namespaces, mappings, tuples and paths turned into plain dicts/lists/str."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items() if k != "__path__"}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flat(f"{prefix}.{key}", sub))
        return out
    return {prefix: value}


def differences(prefix: str, ckpt_value: Any, config_value: Any) -> list[tuple[str, Any, Any]]:
    """``(dotted key, checkpoint value, config value)`` of every leaf where the two differ."""
    left, right = _flat(prefix, to_plain(ckpt_value)), _flat(prefix, to_plain(config_value))
    missing = object()
    out = []
    for key in list(left) + [k for k in right if k not in left]:
        a, b = left.get(key, missing), right.get(key, missing)
        if a != b:
            out.append((key, None if a is missing else a, None if b is missing else b))
    return out


def _states(path: str, given: set[str]) -> bool:
    """Whether the option at ``path`` (``model.`` left off) is one of the ``given`` paths, or in or above one."""
    return any(path == p or path.startswith(p + ".") or p.startswith(path + ".") for p in given)


def reconcile_hparams(
    ckpt_hparams: Mapping[str, Any],
    config_model: Namespace,
    explicit: Iterable[str],
    run_settings: Iterable[str],
    ckpt_path: str | Path,
    normalize: Callable[[str, Any], Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint hyperparameters to apply to the config (see the module docstring for the rule).

    Only what was written is compared: ``--model.net BAM`` states BAM's class, so the checkpoint's BAM
    options fill in the rest (e.g. the number of base classes BAM read from its base learner), while
    ``--model.net.shots 5`` with a 1-shot checkpoint is a conflict.

    Args:
        ckpt_hparams: ``checkpoint["hyper_parameters"]``.
        config_model: the resolved ``model`` section of the config.
        explicit: the model options the config files or the command line set, as dotted paths
            (``lr``, ``net.class_path``, ``net.init_args.shots``; a top-level key alone: all of it).
        run_settings: keys that do not describe the network (an explicit value wins).
        ckpt_path: for messages.
        normalize: ``normalize(key, value)`` puts both sides of ``key`` in one comparable form (the
            model parts: a registered name and its class form are the same); two differing plain
            values (names) are reported as given, others key by key in the normal form.

    Returns:
        ``{key: value}`` from the checkpoint for every key except the run settings set explicitly:
        a network option whose written leaves agree with the checkpoint takes the checkpoint's value.

    Raises:
        CheckpointError: when explicitly set network options differ from the checkpoint's, naming
            each option with both values.
    """
    explicit, run_settings = set(explicit), set(run_settings)
    conflicts: list[tuple[str, Any, Any]] = []
    apply: dict[str, Any] = {}
    for key, ckpt_value in ckpt_hparams.items():
        if key.startswith("_"):
            continue
        given = {p for p in explicit if p == key or p.startswith(key + ".")}
        if not given:
            apply[key] = ckpt_value
            continue
        if key not in config_model:
            continue
        config_value = config_model[key]
        if normalize is None:
            diffs = differences(f"model.{key}", ckpt_value, config_value)
        else:
            diffs = differences(f"model.{key}", normalize(key, ckpt_value), normalize(key, config_value))
        diffs = [d for d in diffs if _states(d[0].removeprefix("model."), given)]
        if diffs and normalize is not None and isinstance(ckpt_value, str) and isinstance(config_value, str):
            diffs = [(f"model.{key}", ckpt_value, config_value)]
        if key in run_settings:
            for name, a, b in diffs:
                warnings.warn(
                    f"{name}: using {b!r} from the config/command line (the checkpoint has {a!r})",
                    stacklevel=2,
                )
        elif diffs:
            conflicts += diffs
        else:
            apply[key] = ckpt_value
    if conflicts:
        lines = [f"  {name}: checkpoint {a!r}, config/command line {b!r}" for name, a, b in conflicts]
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} holds another network than the config asks for:\n"
            + "\n".join(lines)
            + "\nDrop these options (the checkpoint's values are then used) or pick the matching checkpoint"
        )
    return apply


# ------------------------------------------------------------------------------------------ callback
def add_note(err: BaseException, note: str) -> None:
    """Attach ``note`` to ``err`` (``BaseException.add_note`` of Python 3.11, by hand before)."""
    if hasattr(err, "add_note"):
        err.add_note(note)
    else:
        err.__notes__ = [*getattr(err, "__notes__", []), note]  # type: ignore[attr-defined]


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is always the end of the last finished epoch (or of training).

    Same arguments as :class:`~pytorch_lightning.callbacks.ModelCheckpoint`; see the module docstring.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_written_step: int | None = None
        self._last_written_epochs: int | None = None  # epochs finished in the last.ckpt written
        self._run_dir: str | None = None
        self._between_epochs = False  # saving last.ckpt at the start of an epoch

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key (its class name included), so that checkpoints written before this
        # class existed restore into it, and the other way round
        options = {
            "monitor": self.monitor,
            "mode": self.mode,
            "every_n_train_steps": self._every_n_train_steps,
            "every_n_epochs": self._every_n_epochs,
            "train_time_interval": self._train_time_interval,
        }
        return f"ModelCheckpoint{options!r}"

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "last_written_step": self._last_written_step,
            "last_written_epochs": self._last_written_epochs,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._last_written_step = state_dict.get("last_written_step")
        self._last_written_epochs = state_dict.get("last_written_epochs")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._run_dir = str(run_dir(trainer))  # every rank (a collective under DDP)

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` for the current step unless it holds it already."""
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if trainer.state.fn != "fit" or self._last_written_step == trainer.global_step:
            return
        if trainer.global_step == 0:
            return
        for logger in trainer.loggers:  # metrics.csv holds every row up to this checkpoint
            logger.save()
        save_last, self.save_last = self.save_last, True  # "link" would point at an older checkpoint
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self.save_last = save_last

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if not self.save_last:
            return
        # set before saving: they are part of the callback state written into the file
        previous = self._last_written_step, self._last_written_epochs
        self._last_written_step, self._last_written_epochs = trainer.global_step, trainer.current_epoch
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        except BaseException:
            self._last_written_step, self._last_written_epochs = previous
            raise

    def resume_hint(self) -> str:
        """What the user can resume from now (for the message after an error or an interruption)."""
        last = Path(self.last_model_path) if self.last_model_path else None
        if last is None or not last.is_file() or self._last_written_epochs is None:
            return "No epoch had finished: there is no last.ckpt to resume from; run the command again."
        return (
            f"{last} holds the run after {self._last_written_epochs} finished epoch(s): resume with the "
            f"same command plus --ckpt_path {last}"
        )

    # Lightning's rule: last.ckpt only with a new top-k checkpoint. Ours: at the end of every epoch.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        save_last, self.save_last = self.save_last, False
        try:
            super().on_validation_end(trainer, pl_module)
        finally:
            self.save_last = save_last

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        save_last, self.save_last = self.save_last, False
        try:
            super().on_train_epoch_end(trainer, pl_module)
        finally:
            self.save_last = save_last

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        save_last, self.save_last = self.save_last, False
        try:
            super().on_train_batch_end(trainer, *args, **kwargs)
        finally:
            self.save_last = save_last

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the previous epoch has finished completely (metrics logged, learning rate stepped)
        if trainer.current_epoch > 0:
            self._between_epochs = True
            try:
                self._ensure_last(trainer)
            finally:
                self._between_epochs = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_last(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # never a last.ckpt of a broken epoch; Lightning's save_on_exception (a separate file) still works
        save_last, self.save_last = self.save_last, False
        try:
            super().on_exception(trainer, pl_module, exception)
        finally:
            self.save_last = save_last
        started = trainer.global_step > 0 or self._last_written_epochs is not None
        if trainer.state.fn == "fit" and trainer.is_global_zero and self.save_last and started:
            add_note(exception, self.resume_hint())

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._between_epochs:
            # Lightning has counted the next epoch as "ready" before its epoch-start hooks: written
            # here, the file is the state *between* the epochs, as at the end of a fit, so a resumed
            # run starts the next epoch cleanly (validation and all)
            progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
            for part in progress.values():
                part["ready"] = part["started"] = part["processed"] = part["completed"]
        wandb_id = None
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                wandb_id = logger.version
        checkpoint["fss_run"] = {"run_dir": self._run_dir, "wandb_id": wandb_id}
