"""The ``fss`` command line: LightningCLI (fit | validate | test | predict) plus the suite's own commands.

Examples::

    fss fit --config configs/demo.yaml
    fss fit --config configs/coco_hsnet_hm.yaml --model.masking fm --data.fold 1
    fss test --config configs/coco_hsnet_hm.yaml --ckpt_path runs/.../checkpoints/best-epoch=7.ckpt
    fss fit --config configs/demo.yaml --print_config

The model is always :class:`fss.task.FewShotSegmentationTask` (options ``--model.*``); the data
module is any ``LightningDataModule`` given by ``data.class_path`` (``fss.data.*DataModule``).
``model.num_classes`` is taken from the data module's ``num_classes`` when both are built.

Every subcommand also builds three callbacks, configurable under their own keys:
``checkpoint`` (ModelCheckpoint on ``val/miou``, ``best-{epoch}.ckpt`` and ``last.ckpt``),
``early_stopping`` (EarlyStopping on ``val/miou``, ``--early_stopping.patience``, default 20; a
patience above ``max_epochs`` disables it) and ``best_epoch``
(:class:`fss.callbacks.BestEpochTracker`, writes ``best.json``).
Other defaults: ``seed_everything: 0``, ``trainer.default_root_dir: runs`` and
``trainer.use_distributed_sampler: false`` (the episode samplers shard episodes over processes
themselves).
Loggers: a CSVLogger writing to ``<trainer.default_root_dir>/version_N/`` (metrics.csv, the
saved config.yaml, checkpoints/, best.json) always comes first, unless the config lists its own
CSVLogger or says ``trainer.logger: false``; loggers listed in the config (e.g. a WandbLogger, whose
default ``save_dir`` ``.`` becomes ``trainer.default_root_dir``) are added after it.

Commands that are not Lightning subcommands (``fss study ...``) are listed in
:data:`EXTRA_COMMANDS` and dispatched by :func:`main` before LightningCLI sees the arguments.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from jsonargparse import DefaultHelpFormatter, Namespace
from pytorch_lightning import LightningDataModule, Trainer
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger

from fss.callbacks import BestEpochTracker
from fss.task import FewShotSegmentationTask

#: extra commands: name -> ("module:function", one-line help). The function takes the remaining
#: arguments (list[str]) and returns an exit code (or None). Add a command with one line here.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "data": (
        "fss.data.prepare:data_main",
        "dataset tools: fss data check --config X.yaml | fss data prepare deepglobe|isic --src D --dst R",
    ),
    "crossdomain": (
        "fss.crossdomain:main",
        "test one checkpoint on every cross-domain target: fss crossdomain --config configs/crossdomain.yaml",
    ),
    "study": ("fss.study:main", "convergence-speed study: fss study --config configs/study_demo.yaml"),
    "pretrain": (
        "fss.pretrain:main",
        "train a backbone on the synthetic training classes: fss pretrain --config configs/pretrain_synthetic.yaml",
    ),
}


def _extra_commands_epilog() -> str:
    lines = ["other commands (fss COMMAND --help):"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in sorted(EXTRA_COMMANDS.items())]
    return "\n".join(lines) if EXTRA_COMMANDS else ""


class _KeepLinesHelpFormatter(DefaultHelpFormatter):
    """Keeps the line breaks of the description and epilog (the list of extra commands)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class FSSCLI(LightningCLI):
    """LightningCLI with the suite's defaults, callbacks and links (see the module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(BestEpochTracker, "best_epoch")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/miou",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}",
                "early_stopping.monitor": "val/miou",
                "early_stopping.mode": "max",
                "early_stopping.patience": 20,
                # the episode samplers shard episodes themselves; Lightning's would replace them
                "trainer.use_distributed_sampler": False,
                "trainer.default_root_dir": "runs",
            }
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Put a CSVLogger under ``trainer.default_root_dir`` first; point W&B's default save_dir there too.

        ``trainer.logger: false`` keeps no logger at all; a config that lists its own CSVLogger
        keeps it as given.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("ckpt_path") and config.model.weights is not None:
            # the checkpoint holds the backbone too: do not fetch ImageNet weights only to overwrite them
            config.model.weights = None
        trainer = config.trainer
        if trainer.logger is False:
            return
        root = str(trainer.default_root_dir or ".")
        if trainer.logger is None or trainer.logger is True:
            loggers = []
        elif isinstance(trainer.logger, list):
            loggers = list(trainer.logger)
        else:
            loggers = [trainer.logger]
        class_names = [_class_name(logger) for logger in loggers]
        for logger, name in zip(loggers, class_names):
            if name == "WandbLogger" and logger.init_args.get("save_dir") in (None, "."):
                logger.init_args.save_dir = root
        if "CSVLogger" not in class_names:
            csv = Namespace(
                class_path="pytorch_lightning.loggers.CSVLogger", init_args=Namespace(save_dir=root, name="")
            )
            loggers.insert(0, csv)
        trainer.logger = loggers


def _class_name(logger: object) -> str | None:
    """The class name of a logger given as a config namespace (``class_path``), else None."""
    if isinstance(logger, Namespace) and isinstance(logger.get("class_path"), str):
        if logger.get("init_args") is None:
            logger.init_args = Namespace()
        return logger.class_path.rsplit(".", 1)[-1]
    return None


def finish_wandb_runs(trainer: Trainer) -> None:
    """Close the W&B runs of ``trainer``'s loggers, so that a later run in this process starts its own.

    (Lightning's WandbLogger leaves its run open; a second ``main([...])`` in the same process,
    e.g. a study or a notebook, would otherwise log into the first run.)
    """
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def build_cli(args: list[str] | None = None, run: bool = True) -> FSSCLI:
    """Build (and by default run) the Lightning CLI on ``args`` (``sys.argv[1:]`` when None)."""
    cli = FSSCLI(
        FewShotSegmentationTask,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": "fss",
            "description": "fss: few-shot semantic segmentation experiments (Lightning CLI).",
            "epilog": _extra_commands_epilog(),
            "formatter_class": _KeepLinesHelpFormatter,
        },
    )
    if run:
        finish_wandb_runs(cli.trainer)
    return cli


def _load_command(name: str) -> Callable[[list[str]], int | None]:
    target, _ = EXTRA_COMMANDS[name]
    module_name, _, func_name = target.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(args: list[str] | None = None) -> int | None:
    """Entry point of ``fss`` / ``python -m fss``: an extra command, else a Lightning subcommand."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in EXTRA_COMMANDS:
        return _load_command(argv[0])(list(argv[1:]))
    build_cli(args)  # None: LightningCLI reads sys.argv itself
    return None
