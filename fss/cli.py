"""The ``fss`` command line: LightningCLI (fit | validate | test | predict) plus the suite's own commands.

Examples::

    fss fit --config configs/demo.yaml
    fss fit --config configs/coco_hsnet_hm.yaml --model.masking fm --data.fold 1
    fss test --config configs/coco_hsnet_hm.yaml --ckpt_path runs/.../checkpoints/best-epoch=7.ckpt
    fss fit --config configs/demo.yaml --print_config

The model is always :class:`fss.task.FewShotSegmentationTask` (options ``--model.*``); its network,
backbone and masking are typed objects or registered names (``fss.components``): ``--model.net VAT
--model.net.feature_size 8``, ``--model.backbone.weights null``, ``--model.masking fm``. The options
of fss before typed models (``model.net_options``, ``model.weights``) stop with one message that
shows the new form; checkpoints written with them are upgraded when loaded with ``--ckpt_path``.
The data module is any ``LightningDataModule`` given by ``data.class_path`` (``fss.data.*DataModule``).
``model.num_classes`` is taken from the data module's ``num_classes`` when both are built, and the
FS-CS mode from its episodes: ``model.fscs`` from ``data.fscs``, ``model.weak`` from
``data.support_label: tag`` (docs/fscs.md).

Every subcommand also builds four callbacks, configurable under their own keys:
``checkpoint`` (:class:`fss.checkpoint.RunCheckpoint`: ModelCheckpoint on ``val/miou``,
``best-{epoch}.ckpt``, and ``last.ckpt`` at the end of every finished epoch),
``early_stopping`` (EarlyStopping on ``val/miou``, ``--early_stopping.patience``, default 20; a
patience above ``max_epochs`` disables it), ``best_epoch``
(:class:`fss.callbacks.BestEpochTracker`, writes ``best.json``) and ``test_results``
(:class:`fss.callbacks.TestResultsWriter`, writes ``test_results.json`` after a test).
Other defaults: ``seed_everything: 0``, ``trainer.default_root_dir: runs`` and
``trainer.use_distributed_sampler: false`` (the episode samplers shard episodes over processes
themselves).
Loggers: a CSVLogger writing to ``<trainer.default_root_dir>/version_N/`` (metrics.csv, the
saved config.yaml, checkpoints/, best.json) always comes first, unless the config lists its own
CSVLogger or says ``trainer.logger: false``; loggers listed in the config (e.g. a WandbLogger, whose
default ``save_dir`` ``.`` becomes ``trainer.default_root_dir``) are added after it.

Reliability (docs/reliability.md): checkpoints are written atomically
(:class:`fss.atomic.AtomicCheckpointIO`); ``--ckpt_path`` is read with a clear error for a missing or
broken file, and its hyperparameters fill the model options the config leaves unset, while an
explicit network option that differs from the checkpoint is an error naming both values
(:func:`fss.checkpoint.reconcile_hparams`); a resumed fit continues in the checkpoint's run
directory and W&B run; ``ddp_timeout`` (seconds) bounds every distributed collective; an online W&B
logger without a reachable server falls back to offline with a warning; option names cannot be
abbreviated; and :func:`main` prints one clear message instead of a stack trace for errors the user
can fix (``FSS_DEBUG=1`` keeps the trace).

Commands that are not Lightning subcommands (``fss study ...``) are listed in
:data:`EXTRA_COMMANDS` and dispatched by :func:`main` before LightningCLI sees the arguments.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch.distributed
import yaml
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from pytorch_lightning import LightningDataModule, Trainer
from pytorch_lightning.callbacks import Callback, EarlyStopping
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fss.atomic import AtomicCheckpointIO
from fss.backbones import backbone_spec
from fss.callbacks import BestEpochTracker, TestResultsWriter
from fss.checkpoint import (
    SPECIAL_CKPT_PATHS,
    CheckpointError,
    RunCheckpoint,
    load_checkpoint,
    reconcile_hparams,
)
from fss.components import (
    LEGACY_KEYS,
    PARTS,
    given_part_paths,
    leaf_paths,
    option_form_message,
    part_form,
    upgrade_model_options,
)
from fss.describe import class_path
from fss.distributed import DEFAULT_TIMEOUT_S, DistributedFailure, apply_timeout, describe_timeout, shutdown
from fss.errors import condense_parser_error, debug_enabled, error_chain, user_message
from fss.loggers import wandb_offline_reason
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

CSV_LOGGER = "fss.loggers.CSVLogger"


def _extra_commands_epilog() -> str:
    lines = ["other commands (fss COMMAND --help):"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in sorted(EXTRA_COMMANDS.items())]
    return "\n".join(lines) if EXTRA_COMMANDS else ""


def weak_supervision(support_label: str) -> bool:
    """``model.weak`` from ``data.support_label``: class tags only train FS-CS with L_C."""
    return support_label == "tag"


class _KeepLinesHelpFormatter(DefaultHelpFormatter):
    """Keeps the line breaks of the description and epilog (the list of extra commands)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class FSSArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; a bad option ends in two lines (key and reason, where to look), not a dump."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if debug_enabled() or not self.exit_on_error:
            super().error(message, ex)
        self._logger.error(message)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(
            f"{prog}: error: {condense_parser_error(message)}\n"
            f"  (`{prog} --help` lists every option; FSS_DEBUG=1 shows the parser's full message)\n"
        )
        self.exit(2)


def explicit_model_options(argv: list[str], subcommand: str) -> set[str]:
    """The ``model`` options that the config files or the command line in ``argv`` set, as dotted paths.

    Each path is a leaf that was written: ``lr``, ``net.init_args.shots`` (also from
    ``--model.net.shots``), ``masking.class_path``. A part given by name states its class and the
    arguments the name fixes (:func:`fss.components.given_part_paths`): ``--model.net BAM`` states
    ``net.class_path`` only, so a checkpoint fills the BAM options left out (e.g. the number of base
    classes BAM read from its base learner). A value equal to the default is still "set" when written;
    that is what lets a checkpoint fill only the options a user left out.

    Example:
        >>> sorted(explicit_model_options(["--model.net", "BAM", "--model.net.shots", "5", "--model.lr=0.1"], "test"))
        ['lr', 'net.class_path', 'net.init_args.shots']
    """
    paths: set[str] = set()

    def add(path: str, value: Any) -> None:
        key, _, rest = path.partition(".")
        if key not in PARTS:
            paths.update(leaf_paths(path, value))
        elif not rest:
            paths.update(f"{key}.{p}" if p else key for p in given_part_paths(key, value))
        else:
            head = rest.split(".")[0]
            rest = rest if head in ("class_path", "init_args") else f"init_args.{rest}"
            paths.update(leaf_paths(f"{key}.{rest}", value))

    def from_mapping(mapping: Any) -> None:
        if not isinstance(mapping, dict):
            return
        if isinstance(mapping.get("model"), dict):
            for key, value in mapping["model"].items():
                add(str(key), value)
        from_mapping(mapping.get(subcommand))

    def load(value: str, files: bool = True) -> Any:
        """``value`` as YAML, or the YAML file it names (``files``)."""
        try:
            path = Path(value)
            return yaml.safe_load(path.read_text() if files and path.is_file() else value)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
            return value

    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        takes_value = name in ("--config", "-c", "--model") or name.startswith("--model.")
        if takes_value and not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            i += 1
            value = argv[i]
        if name in ("--config", "-c"):
            from_mapping(load(value))
        elif name == "--model":
            from_mapping({"model": load(value)})
        elif name.startswith("--model."):
            add(name[len("--model.") :].removesuffix("+"), load(value, files=False))
        i += 1
    return paths


class FSSCLI(LightningCLI):
    """LightningCLI with the suite's defaults, callbacks and links (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._argv: list[str] | None = None
        self._ckpt: dict[str, Any] = {}  # what the CLI read from --ckpt_path: epoch, global_step, fss_run
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(BestEpochTracker, "best_epoch")
        parser.add_argument(
            "--ddp_timeout",
            type=float,
            default=DEFAULT_TIMEOUT_S,
            help="seconds a distributed collective waits for the other processes before the run fails "
            "with a message (raise it when a rank legitimately needs longer, e.g. a slow disk)",
        )
        parser.add_lightning_class_args(TestResultsWriter, "test_results")
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
        # FS-CS: the episodes decide the task's mode, and class tags only (support_label: tag) its loss
        parser.link_arguments("data.fscs", "model.fscs", apply_on="instantiate")
        parser.link_arguments(
            "data.support_label", "model.weak", compute_fn=weak_supervision, apply_on="instantiate"
        )

    # -- parsing ----------------------------------------------------------------------------
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, first stopping with one message that shows the right form when the arguments or
        configs use the old model options, or give options to a part given by its registered name
        (``fss.components``)."""
        self._argv = (
            [str(a) for a in (sys.argv[1:] if args is None else args)]
            if not isinstance(args, dict | Namespace)
            else []
        )
        if not isinstance(args, dict | Namespace):
            message = option_form_message(self._argv)
            if message:  # several lines (a YAML snippet): written as they are
                sys.stderr.write(f"{parser.prog.replace(' [options]', '')}: error: {message}\n")
                parser.exit(2)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Read ``--ckpt_path`` (clear errors) and apply its hyperparameters by the rule of ``reconcile_hparams``.

        Checkpoints of fss before typed models (``net_options``, ``weights``) are upgraded first. The
        network parts are compared in one form (``fss.components.part_form``), so ``backbone: resnet50``
        in a config matches the class form the checkpoint stores.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS:
            return
        ckpt = load_checkpoint(ckpt_path)
        self._ckpt = {
            "path": str(ckpt_path),
            "epoch": int(ckpt.get("epoch", 0)),
            "global_step": int(ckpt.get("global_step", 0)),
            "fss_run": dict(ckpt.get("fss_run") or {}),
        }
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if set(hparams) & set(LEGACY_KEYS):
            warnings.warn(
                f"{ckpt_path} was written by fss before typed models: its model options are read as "
                "net/backbone/masking objects (docs/design.md)",
                stacklevel=2,
            )
            hparams = upgrade_model_options(hparams)
        for key in FewShotSegmentationTask.INIT_ONLY:
            hparams.pop(key, None)
        if not hparams:
            return
        explicit = explicit_model_options(self._argv or [], subcommand)

        def normalize(key: str, value: Any) -> Any:
            if key not in PARTS:
                return value
            try:
                return part_form(key, value)
            except (ValueError, ImportError, AttributeError) as err:
                raise CheckpointError(f"--ckpt_path {ckpt_path}: model.{key} cannot be read: {err}") from None

        keys = reconcile_hparams(
            hparams, config.model, explicit, FewShotSegmentationTask.RUN_SETTINGS, ckpt_path, normalize
        )
        apply = {key: hparams[key] for key in keys}
        if apply:
            self.config = self.parser.parse_object({subcommand: {"model": apply}}, self.config)

    # -- before the objects are built -------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        """Loggers (a CSVLogger first, W&B under the run root, offline without a server), resume targets.

        ``trainer.logger: false`` keeps no logger at all; a config that lists its own CSVLogger
        keeps it as given.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("ckpt_path"):
            # the checkpoint holds the backbone and network: do not fetch or load initial weights
            config.model.backbone = _without_weights(config.model.backbone)
            config.model.pretrained = None
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
            if name == "WandbLogger":
                if logger.init_args.get("save_dir") in (None, "."):
                    logger.init_args.save_dir = root
                _wandb_online_or_offline(logger)
        if "CSVLogger" not in class_names:
            csv = Namespace(class_path=CSV_LOGGER, init_args=Namespace(save_dir=root, name=""))
            loggers.insert(0, csv)
            class_names.insert(0, "CSVLogger")
        trainer.logger = loggers
        if self.subcommand == "fit" and self._ckpt:
            self._resume_in_place(loggers, class_names, root)

    def _resume_in_place(self, loggers: list[Any], class_names: list[str | None], root: str) -> None:
        """Point the loggers of a resumed fit at the checkpoint's run directory and W&B run.

        The CSVLogger continues the checkpoint's ``metrics.csv`` when its directory is the checkpoint's
        run directory: given so (``fss study`` names it), or with no version set and the same
        ``default_root_dir`` (a fit resumed elsewhere starts a new version there). A WandbLogger
        without an ``id`` resumes the checkpoint's W&B run.
        """
        run = self._ckpt["fss_run"]
        run_dir = Path(run["run_dir"]) if run.get("run_dir") else None
        if run_dir is None or not run_dir.is_dir():
            return
        for logger, name in zip(loggers, class_names):
            if name == "CSVLogger" and logger.class_path == CSV_LOGGER:
                args = logger.init_args
                base = Path(args.get("save_dir") or root) / (args.get("name") or "")
                version = args.get("version")
                if version is None and base.resolve() == run_dir.parent.resolve():
                    args.version = version = run_dir.name
                if version is not None and (base / str(version)).resolve() == run_dir.resolve():
                    args.resume_ckpt = self._ckpt["path"]
            if name == "WandbLogger" and run.get("wandb_id") and logger.init_args.get("id") is None:
                logger.init_args.id = run["wandb_id"]
                if "resume" in logger.init_args:  # wandb.init's own arguments, listed by the parser
                    logger.init_args.resume = "allow"
                else:
                    logger.dict_kwargs = Namespace(
                        **{**dict(logger.get("dict_kwargs") or {}), "resume": "allow"}
                    )

    # -- running ------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Exception as err:
            # a distributed failure is explained here, where the trainer (its ddp_timeout) is known
            chain = error_chain(err)
            described = next((d for e in chain if (d := describe_timeout(e, self.trainer)) is not None), None)
            if described is None:
                raise
            failure = DistributedFailure(described)
            failure.__notes__ = list(getattr(err, "__notes__", []))
            raise failure from err

    # -- building the trainer ---------------------------------------------------------------
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        trainer = super()._instantiate_trainer(config, callbacks)
        apply_timeout(trainer, float(self._get(self.config_init, "ddp_timeout", default=DEFAULT_TIMEOUT_S)))
        return trainer


def _without_weights(backbone: object) -> object:
    """``model.backbone`` (a name or a class_path namespace) with ``weights: null``."""
    if isinstance(backbone, str):
        cls, kwargs = backbone_spec(backbone)
        return Namespace(class_path=class_path(cls), init_args=Namespace(**kwargs, weights=None))
    if isinstance(backbone, Namespace) and isinstance(backbone.get("init_args"), Namespace):
        if "weights" in backbone.init_args:
            backbone.init_args.weights = None
    return backbone


def _class_name(logger: object) -> str | None:
    """The class name of a logger given as a config namespace (``class_path``), else None."""
    if isinstance(logger, Namespace) and isinstance(logger.get("class_path"), str):
        if logger.get("init_args") is None:
            logger.init_args = Namespace()
        return logger.class_path.rsplit(".", 1)[-1]
    return None


def _wandb_online_or_offline(logger: Namespace) -> None:
    """Switch an online WandbLogger to offline, with a warning, when W&B cannot be reached."""
    if logger.init_args.get("offline"):
        return
    reason = wandb_offline_reason()
    if reason is None:
        return
    logger.init_args.offline = True
    warnings.warn(
        f"W&B: {reason}; logging offline to {logger.init_args.save_dir}/wandb instead "
        "(upload later with `wandb sync <dir>/wandb/offline-run-*`; set WANDB_MODE=offline to skip this check)",
        stacklevel=2,
    )


def finish_wandb_runs(trainer: Trainer) -> None:
    """Close the W&B runs of ``trainer``'s loggers, so that a later run in this process starts its own.

    (Lightning's WandbLogger leaves its run open; a second ``main([...])`` in the same process,
    e.g. a study or a notebook, would otherwise log into the first run.)
    """
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def build_cli(args: list[str] | None = None, run: bool = True) -> FSSCLI:
    """Build (and by default run) the Lightning CLI on ``args`` (``sys.argv[1:]`` when None).

    Errors are raised (for Python callers); :func:`main` turns them into messages.
    """
    cli = FSSCLI(
        FewShotSegmentationTask,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_class=FSSArgumentParser,
        parser_kwargs={
            "prog": "fss",
            "description": "fss: few-shot semantic segmentation experiments (Lightning CLI).",
            "epilog": _extra_commands_epilog(),
            "formatter_class": _KeepLinesHelpFormatter,
            "allow_abbrev": False,  # --model.maskin must not silently mean --model.masking
        },
    )
    if run:
        finish_wandb_runs(cli.trainer)
        shutdown(cli.trainer)
    return cli


def _load_command(name: str) -> Callable[[list[str]], int | None]:
    target, _ = EXTRA_COMMANDS[name]
    module_name, _, func_name = target.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def _notes(err: BaseException) -> str:
    return "".join(f"\n{note}" for note in getattr(err, "__notes__", []) or [])


def _prefix(argv: list[str]) -> str:
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    where = "fss " + argv[0] if argv and not argv[0].startswith("-") else "fss"
    return f"[rank {rank}] {where}" if rank not in ("", "0") else where


def main(args: list[str] | None = None) -> int | None:
    """Entry point of ``fss`` / ``python -m fss``: an extra command, else a Lightning subcommand.

    Returns None (success) or an exit status. Errors the user can fix are printed as one message
    (:mod:`fss.errors`); with ``FSS_DEBUG=1`` every error propagates with its stack trace.
    """
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            return _load_command(argv[0])(list(argv[1:]))
        build_cli(args)  # None: LightningCLI reads sys.argv itself
        return None
    except SIGTERMException as err:
        if debug_enabled():
            raise
        print(f"{_prefix(argv)}: terminated (SIGTERM).{_notes(err)}", file=sys.stderr, flush=True)
        return 143
    except SystemExit as err:
        interrupt = err.__context__
        if isinstance(interrupt, KeyboardInterrupt) and not debug_enabled():
            # Lightning turns Ctrl+C into sys.exit(1) after its own clean-up
            print(f"{_prefix(argv)}: interrupted.{_notes(interrupt)}", file=sys.stderr, flush=True)
            return 130
        raise
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"{_prefix(argv)}: interrupted.", file=sys.stderr, flush=True)
        return 130
    except Exception as err:
        message = None if debug_enabled() else user_message(err)
        if message is None:
            raise
        print(f"{_prefix(argv)}: error: {message}{_notes(err)}", file=sys.stderr, flush=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the other ranks may be stuck or gone: tearing the process group down could wait forever
            sys.stdout.flush()
            os._exit(1)
        return 1
