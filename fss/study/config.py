"""The study config: parsing, the runs it defines, and each run's ``fss fit`` / ``fss test`` arguments.

See :mod:`fss.study` for the config format.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from fss.study.tables import read_curve

STUDY_KEYS = {
    "name",
    "base",
    "output_dir",
    "sweep",
    "folds",
    "seeds",
    "fold_key",
    "overrides",
    "wandb",
    "pretrain",
    "slurm",
    "stage1",
}


class StudyConfigError(ValueError):
    """The study config is malformed (the message names the file and the option)."""


def _label(value: Any) -> str:
    """A short, path-safe label of a swept value (``None`` -> ``none``, a path -> its stem)."""
    if value is None:
        return "none"
    text = str(value)
    if "/" in text or "\\" in text:
        text = Path(text).stem
    return re.sub(r"[^A-Za-z0-9_.=]+", "_", text).strip("_") or "value"


def cli_value(value: Any) -> str:
    """The command-line text of an option value (parsed back as YAML by jsonargparse)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


@dataclass
class SlurmOptions:
    """The SLURM resources of every array task (the study config's ``slurm:`` mapping).

    Attributes:
        job_name: ``#SBATCH --job-name`` (default: the study's name).
        partition, account, mem: passed on when set.
        time: wall-clock limit per task: ``D-HH:MM:SS`` text or minutes.
        gpus_per_node, cpus_per_task: per task (one run per task).
        max_parallel: at most this many tasks at once (``--array=0-N%max_parallel``); None: no limit.
        setup: shell lines run before ``fss`` in each task (activate the environment, set W&B mode).
        extra: further ``#SBATCH --key=value`` options.
    """

    job_name: str | None = None
    partition: str | None = None
    account: str | None = None
    time: str | int = "1-00:00:00"
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem: str | None = None
    max_parallel: int | None = None
    setup: list[str] = field(
        default_factory=lambda: ["source .venv/bin/activate", "export WANDB_MODE=offline"]
    )
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, raw: Any, where: str) -> SlurmOptions:
        """Build from the config mapping; an unknown key is a :class:`StudyConfigError` naming it."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise StudyConfigError(f"{where}: `slurm:` is a mapping (partition, time, gpus_per_node, ...)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise StudyConfigError(
                f"{where}: unknown slurm option(s) {unknown}; valid: {sorted(known)} "
                "(other #SBATCH options go under slurm.extra)"
            )
        options = cls(**raw)
        if isinstance(options.setup, str):
            options.setup = [options.setup]
        for name in ("gpus_per_node", "cpus_per_task", "max_parallel"):
            value = getattr(options, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise StudyConfigError(f"{where}: slurm.{name} must be a non-negative integer, got {value!r}")
        if not isinstance(options.extra, dict):
            raise StudyConfigError(
                f"{where}: slurm.extra maps #SBATCH options to values, got {options.extra!r}"
            )
        return options

    def minutes(self) -> int:
        """``time`` in minutes (for submitit)."""
        if isinstance(self.time, int):
            return self.time
        days, _, clock = str(self.time).rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        hours, minutes, seconds = parts
        return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)


@dataclass
class FirstStage:
    """A first training stage fitted once per fold before the study's runs (the study config's
    ``stage1:`` mapping); its checkpoint is given to every run of that fold through ``option``.

    This chains BAM's two stages: stage 1 trains the base learner (``configs/pascal_bam_base.yaml``),
    every run of the study trains the meta learner with ``--model.net.base_learner`` set to it.

    Attributes:
        config: the stage's fit config (a path, relative to the study file, else to the cwd).
        option: the option of every run that receives the stage's checkpoint path.
        checkpoint: ``last`` (the end of the last epoch: stages that are not validated, as BAM's
            base learner) or ``best`` (the best checkpoint by the stage config's monitor).
        seed: its ``seed_everything`` (one first stage per fold, shared by all variants and seeds).
        overrides: options set on the stage's fit; the study's own ``overrides`` are *not* applied
            (they are options of the runs, which are another model).
    """

    config: Path
    option: str = "model.net.base_learner"
    checkpoint: Literal["last", "best"] = "last"
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)

    KEYS = ("config", "option", "checkpoint", "seed", "overrides")

    @classmethod
    def from_mapping(cls, raw: Any, study_path: Path) -> FirstStage:
        """Build from the config mapping; a wrong key or value is a :class:`StudyConfigError` naming it."""
        where = f"{study_path}: stage1"
        if not isinstance(raw, dict):
            raise StudyConfigError(f"{where} is a mapping (config, option, checkpoint, seed, overrides)")
        unknown = sorted(set(raw) - set(cls.KEYS))
        if unknown:
            raise StudyConfigError(f"{where}: unknown option(s) {unknown}; valid: {list(cls.KEYS)}")
        if "config" not in raw:
            raise StudyConfigError(f"{where}: missing `config:` (the fit config of the first stage)")
        checkpoint = raw.get("checkpoint", "last")
        if checkpoint not in ("last", "best"):
            raise StudyConfigError(f"{where}.checkpoint must be `last` or `best`, got {checkpoint!r}")
        seed = _int_list(raw.get("seed", 0), study_path, "stage1.seed")
        if len(seed) != 1:
            raise StudyConfigError(f"{where}.seed is one integer, got {raw.get('seed')!r}")
        overrides = raw.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise StudyConfigError(f"{where}.overrides maps options to values")
        option = raw.get("option", "model.net.base_learner")
        if not isinstance(option, str) or not option:
            raise StudyConfigError(f"{where}.option is an option name such as model.net.base_learner")
        return cls(
            config=_resolve(study_path, str(raw["config"]), "stage1.config"),
            option=option,
            checkpoint=checkpoint,
            seed=seed[0],
            overrides=dict(overrides),
        )


@dataclass
class Run:
    """One run of a study: a variant on one fold and seed.

    Attributes:
        variant: the variant's name (labels of its swept values joined by ``-``).
        options: the swept options of the variant, dotted option -> value.
        fold, seed: the fold and seed of the run.
        root: the run's ``trainer.default_root_dir``; ``root/fit`` and ``root/test`` are its logs.
    """

    variant: str
    options: dict[str, Any]
    fold: int
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"{self.variant}-fold{self.fold}-seed{self.seed}"

    @property
    def fit_dirs(self) -> list[Path]:
        """The fit log directories: ``fit`` (a resumed fit continues in it), then the ``fit-resume1``,
        ``fit-resume2``, ... that studies written before resumption in place left behind."""
        resumed = sorted(self.root.glob("fit-resume*"), key=lambda p: int(p.name[len("fit-resume") :] or 0))
        return [d for d in [self.root / "fit", *resumed] if d.is_dir()]

    @property
    def best_json(self) -> Path | None:
        """The ``best.json`` of the last fit that finished, if any."""
        found = [d / "best.json" for d in self.fit_dirs if (d / "best.json").is_file()]
        return found[-1] if found else None

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoint_dir / "best.ckpt"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    @property
    def fit_done(self) -> bool:
        return self.best_json is not None and self.best_ckpt.is_file()

    @property
    def test_done(self) -> bool:
        return (self.test_dir / "test_results.json").is_file()

    def curve(self, key: str = "val/miou") -> dict[int, float]:
        """``{epoch: value}`` of ``key`` over all fit directories (a later one wins an epoch)."""
        curve: dict[int, float] = {}
        for d in self.fit_dirs:
            curve.update(read_curve(d / "metrics.csv", key))
        return dict(sorted(curve.items()))


@dataclass
class Study:
    """A parsed study config (see the module docstring)."""

    name: str
    base_config: Path
    output_dir: Path
    sweep: dict[str, dict[str, Any]]  # option -> {label: value}
    folds: list[int]
    seeds: list[int]
    fold_key: str = "data.init_args.fold"
    overrides: dict[str, Any] = field(default_factory=dict)
    wandb: dict[str, Any] | None = None
    pretrain: Path | None = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    stage1: FirstStage | None = None

    # ------------------------------------------------------------------------------- loading
    @classmethod
    def from_file(cls, path: str | Path, output_dir: str | Path | None = None) -> Study:
        """Read a study config; an embedded base config is written to ``<output_dir>/base_config.yaml``."""
        path = Path(path)
        if not path.is_file():
            raise StudyConfigError(f"study config not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise StudyConfigError(f"{path}: a study config is a mapping (name, base, sweep, ...)")
        unknown = set(raw) - STUDY_KEYS
        if unknown:
            raise StudyConfigError(
                f"{path}: unknown study option(s) {sorted(unknown)}; valid: {sorted(STUDY_KEYS)} "
                "(options of the runs go under `overrides:` or into the base config)"
            )
        name = str(raw.get("name") or path.stem)
        out = Path(output_dir or raw.get("output_dir") or Path("runs") / name)
        if "base" not in raw:
            raise StudyConfigError(f"{path}: missing `base:` (a fit config path, or the config as a mapping)")
        base = raw["base"]
        if isinstance(base, dict):
            out.mkdir(parents=True, exist_ok=True)
            base_path = out / "base_config.yaml"
            base_path.write_text(yaml.safe_dump(base, sort_keys=False))
        else:
            base_path = _resolve(path, str(base), "base")
        sweep_raw = raw.get("sweep") or {"model.masking": ["fm", "im", "hm"]}
        if not isinstance(sweep_raw, dict) or not sweep_raw:
            raise StudyConfigError(f"{path}: `sweep:` maps options to lists of values (or label: value maps)")
        sweep: dict[str, dict[str, Any]] = {}
        for option, values in sweep_raw.items():
            if isinstance(values, dict):
                sweep[option] = {_label(k): v for k, v in values.items()}
            elif isinstance(values, list) and values:
                sweep[option] = {_label(v): v for v in values}
            else:
                raise StudyConfigError(f"{path}: sweep.{option} must be a non-empty list or mapping")
            if len(sweep[option]) != len(values):
                raise StudyConfigError(f"{path}: sweep.{option} has values with the same label: {values}")
        folds = _int_list(raw.get("folds", [0]), path, "folds")
        seeds = _int_list(raw.get("seeds", [0]), path, "seeds")
        overrides = raw.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise StudyConfigError(f"{path}: `overrides:` maps options (e.g. trainer.max_epochs) to values")
        wandb = raw.get("wandb", {"project": "fss-study"})
        if wandb is True or wandb is None:
            wandb = {"project": "fss-study"}
        if wandb is not False and not isinstance(wandb, dict):
            raise StudyConfigError(f"{path}: `wandb:` is false or a mapping (project, entity, offline)")
        pretrain = raw.get("pretrain")
        return cls(
            name=name,
            base_config=base_path,
            output_dir=out,
            sweep=sweep,
            folds=folds,
            seeds=seeds,
            fold_key=str(raw.get("fold_key", "data.init_args.fold")),
            overrides=dict(overrides),
            wandb=None if wandb is False else wandb,
            pretrain=_resolve(path, str(pretrain), "pretrain") if pretrain else None,
            slurm=SlurmOptions.from_mapping(raw.get("slurm"), str(path)),
            stage1=FirstStage.from_mapping(raw["stage1"], path) if raw.get("stage1") is not None else None,
        )

    # ------------------------------------------------------------------------------- runs
    @property
    def variants(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, {option: value}) of every combination of the swept values, in config order."""
        options = list(self.sweep)
        out = []
        for labels in itertools.product(*(list(self.sweep[o]) for o in options)):
            values = {o: self.sweep[o][label] for o, label in zip(options, labels)}
            out.append(("-".join(labels), values))
        return out

    def runs(self) -> list[Run]:
        """Every run, variant-major, then fold, then seed (the order of ``--run-index``)."""
        return [
            Run(name, values, fold, seed, self.output_dir / "runs" / name / f"fold{fold}-seed{seed}")
            for name, values in self.variants
            for fold in self.folds
            for seed in self.seeds
        ]

    def stage1_run(self, fold: int) -> Run:
        """The first stage of ``fold`` as a run (``<output_dir>/stage1/fold<f>``); needs ``stage1:``."""
        if self.stage1 is None:
            raise StudyConfigError(f"study {self.name} has no `stage1:`")
        root = self.output_dir / "stage1" / f"fold{fold}"
        return Run("stage1", {}, fold, self.stage1.seed, root)

    def stage1_checkpoint(self, fold: int) -> Path:
        """The checkpoint of ``fold``'s first stage that its runs receive."""
        assert self.stage1 is not None
        run = self.stage1_run(fold)
        return run.last_ckpt if self.stage1.checkpoint == "last" else run.best_ckpt

    def stage1_done(self, fold: int) -> bool:
        """Whether ``fold``'s first stage finished (its ``done.json``, written after the fit, and its
        checkpoint exist; a ``last.ckpt`` alone may be the end of an interrupted epoch)."""
        return (self.stage1_run(fold).root / "done.json").is_file() and self.stage1_checkpoint(fold).is_file()

    def stage1_args(self, fold: int, resume: bool = False) -> list[str]:
        """The ``fss fit`` arguments of ``fold``'s first stage (resuming from its ``last.ckpt``)."""
        assert self.stage1 is not None
        run = self.stage1_run(fold)
        options: dict[str, Any] = dict(self.stage1.overrides)
        options[self.fold_key] = fold
        options["seed_everything"] = run.seed
        options["trainer.default_root_dir"] = str(run.root)
        options["trainer.logger"] = self._loggers(run, "fit", "fit")
        args = ["fit", "--config", str(self.stage1.config)]
        for key, value in options.items():
            args += [f"--{key}", cli_value(value)]
        args += ["--checkpoint.dirpath", str(run.checkpoint_dir)]
        args += ["--checkpoint.filename", "best", "--checkpoint.save_top_k", "1"]
        if resume and run.last_ckpt.is_file():
            args += ["--ckpt_path", str(run.last_ckpt)]
        return args

    def _loggers(self, run: Run, stage: Literal["fit", "test"], version: str) -> list[dict[str, Any]]:
        loggers: list[dict[str, Any]] = [
            {
                # fss's CSVLogger: a resumed fit continues fit/metrics.csv (Lightning's would empty it)
                "class_path": "fss.loggers.CSVLogger",
                "init_args": {"save_dir": str(run.root), "name": "", "version": version},
            }
        ]
        if self.wandb:
            init_args = {
                "project": self.wandb.get("project", "fss-study"),
                "name": run.name,
                "save_dir": str(run.root),
            }
            for key in ("entity", "offline"):
                if key in self.wandb:
                    init_args[key] = self.wandb[key]
            tags = [
                run.variant,
                f"fold{run.fold}",
                f"seed{run.seed}",
                *[str(t) for t in self.wandb.get("tags", [])],
            ]
            loggers.append(
                {
                    "class_path": "pytorch_lightning.loggers.WandbLogger",
                    "init_args": init_args,
                    "dict_kwargs": {"group": self.name, "tags": tags, "job_type": stage},
                }
            )
        return loggers

    def args(self, run: Run, stage: Literal["fit", "test"], resume: bool = False) -> list[str]:
        """The ``fss fit`` / ``fss test`` arguments of ``run`` (without the ``fss`` program name)."""
        options: dict[str, Any] = dict(self.overrides)
        if self.stage1 is not None:  # the run's input from the first stage of its fold
            options[self.stage1.option] = str(self.stage1_checkpoint(run.fold))
        options.update(run.options)
        options[self.fold_key] = run.fold
        options["seed_everything"] = run.seed
        options["trainer.default_root_dir"] = str(run.root)
        resume = resume and stage == "fit" and run.last_ckpt.is_file()
        # a resumed fit continues in fit/ and in the same W&B run (the CLI reads both from last.ckpt)
        options["trainer.logger"] = self._loggers(run, stage, stage)
        args = [stage, "--config", str(self.base_config)]
        for key, value in options.items():
            args += [f"--{key}", cli_value(value)]
        if stage == "fit":
            # one best checkpoint under a fixed name and place (whatever the logger's version), so
            # that the test command is known in advance and a resumed fit finds last.ckpt
            args += ["--checkpoint.dirpath", str(run.checkpoint_dir)]
            args += ["--checkpoint.filename", "best", "--checkpoint.save_top_k", "1"]
            if resume:
                args += ["--ckpt_path", str(run.last_ckpt)]
        else:
            args += ["--ckpt_path", str(run.best_ckpt)]  # the CLI writes test_results.json
        return args

    def pretrain_args(self) -> list[str] | None:
        """The ``fss pretrain`` arguments when the study has a pretrain config, else None."""
        return None if self.pretrain is None else ["pretrain", "--config", str(self.pretrain)]


def _resolve(study_path: Path, value: str, option: str) -> Path:
    """A path from the study config: relative to the study file if it exists there, else to the cwd."""
    candidates = [Path(value)] if Path(value).is_absolute() else [study_path.parent / value, Path(value)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise StudyConfigError(f"{study_path}: `{option}: {value}` not found (tried {tried})")


def _int_list(value: Any, path: Path, option: str) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise StudyConfigError(f"{path}: `{option}:` must be an integer or a list of integers, got {value!r}")
    return list(values)


def command_line(args: Sequence[str]) -> str:
    """``fss ARGS`` quoted for a POSIX shell."""
    return shlex.join(["fss", *args])
