"""``fss study``: the convergence-speed study of the HM paper, as one command.

A study runs one base experiment (a normal ``fss fit`` config) once per *variant* (a value of each
swept option, by default ``model.masking`` in fm / im / hm), per fold and per seed, with the same
data and early-stopping rule; every run is a ``fit`` followed by a ``test`` of its best checkpoint.
It then writes into the study directory::

    <output_dir>/
      runs.csv        one row per run: best epoch, best val mIoU, test mIoU / FB-IoU, epoch_95, wall time
      summary.csv     mean and standard deviation over seeds per (variant, fold) and per variant
      study.md        the tables (rows = variants, columns = folds / mean), as the HM paper's
                      "Number of best epochs" table, for each of those measures
      curves.png      val mIoU per epoch, one line per variant, seeds as a band (one panel per fold)
      per_class_iou.csv   test IoU per class, per run
      runs/<variant>/fold<f>-seed<s>/   one run: checkpoints/{best,last}.ckpt, wandb/, and the
                      CSVLogger directories fit/ (metrics.csv, config.yaml, best.json; a resumed fit
                      continues in fit-resume1/ ...) and test/ (metrics.csv, test_results.json)

Study config (YAML)::

    name: study_demo                 # W&B group and default output directory name
    base: demo.yaml                  # the fit config: a path (relative to this file, else to the
                                     # working directory) or the config itself as a mapping
    output_dir: runs/study_demo
    sweep:                           # option -> list of values, or mapping label -> value
      model.masking: [fm, im, hm]
      model.weights: {random: null, trained: runs/pretrain_synthetic/backbone.pth}
    folds: [0]                       # written to data.init_args.fold (option fold_key)
    seeds: [0, 1]                    # written to seed_everything (model init and shuffling)
    overrides: {trainer.max_epochs: 15}   # options set on every run
    wandb: {project: fss-study, offline: true}   # or wandb: false
    pretrain: pretrain_synthetic.yaml    # optional `fss pretrain` config run first (once)

Finished runs (``best.json`` and ``test/test_results.json`` present) are skipped; a run
interrupted during fit restarts from ``checkpoints/last.ckpt``. ``--emit-commands`` prints the
``fss fit ... && fss test ...`` line of every run for a cluster scheduler (see ``docs/study.md``).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback

MEASURES: tuple[tuple[str, str], ...] = (
    ("best_epoch", "Number of best epochs (0-based epoch of the best val mIoU)"),
    ("epoch_95", "Epoch reaching 95% of the run's best val mIoU (0-based)"),
    ("best_val_miou", "Best val mIoU (%)"),
    ("test_miou", "Test mIoU (%) of the best checkpoint"),
    ("test_fbiou", "Test FB-IoU (%) of the best checkpoint"),
    ("wall_time_s", "Wall-clock time of fit (s)"),
)
RUN_COLUMNS: tuple[str, ...] = (
    "variant",
    "fold",
    "seed",
    "best_epoch",
    "epoch_95",
    "best_val_miou",
    "test_miou",
    "test_fbiou",
    "epochs_run",
    "wall_time_s",
    "initial_val_miou",
    "status",
    "run_dir",
)
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
}


class StudyConfigError(ValueError):
    """The study config is malformed (the message names the file and the option)."""


# ------------------------------------------------------------------------------------ callback
class TestResultsWriter(Callback):
    """Writes ``test_results.json`` (test mIoU, FB-IoU and IoU per class) into the test run directory.

    Runs before the task's ``on_test_epoch_end`` (which resets the metric), reading the task's
    ``test`` metric (:class:`fss.metrics.FewShotIoU`); class names come from the data module's
    ``class_names`` when it has them.

    Args:
        filename: name of the JSON file written into ``trainer.log_dir``.
    """

    def __init__(self, filename: str = "test_results.json") -> None:
        super().__init__()
        self.filename = filename

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metric = pl_module.metric("test")  # FewShotSegmentationTask.metric
        values = {k: float(v) for k, v in metric.compute().items()}
        per_class = metric.per_class_iou().tolist()  # [num_classes], NaN for unseen classes
        names = list(getattr(trainer.datamodule, "class_names", []) or [])
        per_class_iou = {
            (names[c] if c < len(names) else str(c)): round(v, 4)
            for c, v in enumerate(per_class)
            if not math.isnan(v)
        }
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        results = {"test_miou": values["miou"], "test_fbiou": values["fbiou"], "per_class_iou": per_class_iou}
        (run_dir / self.filename).write_text(json.dumps(results, indent=2) + "\n")


# ------------------------------------------------------------------------------------ config
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
        """The fit log directories in order: ``fit``, then ``fit-resume1``, ``fit-resume2``, ... (resumptions)."""
        resumed = sorted(self.root.glob("fit-resume*"), key=lambda p: int(p.name[len("fit-resume") :] or 0))
        return [d for d in [self.root / "fit", *resumed] if d.is_dir()]

    def fit_version(self, resume: bool) -> str:
        """The CSVLogger version of the next fit: ``fit``, or a fresh ``fit-resumeN`` when resuming.

        (A resumed fit logs into a new directory: Lightning's CSVLogger may rewrite an existing
        metrics.csv without its earlier rows.)
        """
        if not resume or not self.fit_dirs:
            return "fit"
        return f"fit-resume{len(self.fit_dirs)}"

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

    def _loggers(self, run: Run, stage: Literal["fit", "test"], version: str) -> list[dict[str, Any]]:
        loggers: list[dict[str, Any]] = [
            {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
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
        options.update(run.options)
        options[self.fold_key] = run.fold
        options["seed_everything"] = run.seed
        options["trainer.default_root_dir"] = str(run.root)
        resume = resume and stage == "fit" and run.last_ckpt.is_file()
        version = run.fit_version(resume) if stage == "fit" else "test"
        options["trainer.logger"] = self._loggers(run, stage, version)
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
            args += ["--trainer.callbacks+=fss.study.TestResultsWriter", "--ckpt_path", str(run.best_ckpt)]
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


# ------------------------------------------------------------------------------------ running
Launcher = Literal["subprocess", "inprocess"]


def _execute(args: list[str], launcher: Launcher, log: Path) -> None:
    """Run ``fss ARGS`` in a subprocess (output to ``log``) or in this process; raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # `fss pretrain` is reached through its module, so that it works before it is registered in the CLI
    module, args = ("fss.pretrain", list(args[1:])) if args[0] == "pretrain" else ("fss", list(args))
    if launcher == "inprocess":
        if module == "fss.pretrain":
            from fss.pretrain import main as command
        else:
            from fss.cli import main as command
        argv, sys.argv = sys.argv, ["fss"]  # LightningCLI warns when sys.argv holds other arguments
        try:
            command(args)
        finally:
            sys.argv = argv
        return
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(['python', '-m', module, *args])}\n")
        out.flush()
        proc = subprocess.run([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"`{command_line(args[:3])} ...` failed (exit {proc.returncode}); see {log}")


def run_one(study: Study, run: Run, launcher: Launcher = "subprocess") -> str:
    """Fit (resuming from ``last.ckpt``) and test ``run`` unless already done; return its status."""
    if run.fit_done and run.test_done:
        return "skipped"
    start = time.monotonic()
    resumed = not run.fit_done and run.last_ckpt.is_file()
    if not run.fit_done:
        _execute(study.args(run, "fit", resume=True), launcher, run.root / "fit.log")
        if not run.fit_done:
            raise RuntimeError(
                f"fit of {run.name} ended without best.json in {run.root}/fit* or {run.best_ckpt}"
            )
    if run.test_dir.exists():  # an interrupted test: start it afresh
        shutil.rmtree(run.test_dir)
    _execute(study.args(run, "test"), launcher, run.root / "test.log")
    status = "resumed" if resumed else "ran"
    print(f"[study] {run.name}: {status} in {time.monotonic() - start:.0f} s", flush=True)
    return status


def run_study(
    study: Study, launcher: Launcher = "subprocess", jobs: int = 1, indices: Sequence[int] | None = None
) -> dict[str, str]:
    """Run the study's (selected) runs, ``jobs`` at a time; return ``{run name: status}``."""
    runs = study.runs()
    selected = [runs[i] for i in indices] if indices is not None else runs
    pretrain = study.pretrain_args()
    if pretrain is not None:
        from fss.pretrain import output_path

        if not output_path(study.pretrain).is_file():
            print(f"[study] pretraining the backbone: {command_line(pretrain)}", flush=True)
            _execute(pretrain, launcher, study.output_dir / "pretrain.log")
    if launcher == "inprocess":
        jobs = 1
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # parallel runs share the cores
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def attempt(run: Run) -> str:
        try:
            return run_one(study, run, launcher)
        except (Exception, SystemExit) as err:  # keep going: report failures at the end
            print(f"[study] {run.name} FAILED: {err}", file=sys.stderr, flush=True)
            return f"failed: {err}"

    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            statuses = list(pool.map(attempt, selected))
    else:
        statuses = [attempt(run) for run in selected]
    return {run.name: status for run, status in zip(selected, statuses)}


# ------------------------------------------------------------------------------------ results
def read_curve(metrics_csv: Path, key: str = "val/miou") -> dict[int, float]:
    """``{epoch: value}`` of ``key`` from a CSVLogger ``metrics.csv`` (the last row of an epoch wins)."""
    curve: dict[int, float] = {}
    if not metrics_csv.is_file():
        return curve
    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            value, epoch = row.get(key), row.get("epoch")
            if value not in (None, "") and epoch not in (None, ""):
                curve[int(float(epoch))] = float(value)
    return dict(sorted(curve.items()))


def epoch_reaching(curve: dict[int, float], fraction: float = 0.95) -> int | None:
    """First epoch whose value reaches ``fraction`` of the curve's best (None for an empty curve)."""
    if not curve:
        return None
    target = fraction * max(curve.values())
    return next(epoch for epoch, value in curve.items() if value >= target)


def collect(study: Study) -> list[dict[str, Any]]:
    """One record per run (missing values are None; ``status`` is done / fit only / missing)."""
    records = []
    for run in study.runs():
        best = _read_json(run.best_json) if run.best_json is not None else {}
        test = _read_json(run.test_dir / "test_results.json")
        curve = run.curve()
        record: dict[str, Any] = {
            "variant": run.variant,
            "fold": run.fold,
            "seed": run.seed,
            "best_epoch": best.get("best_epoch"),
            "epoch_95": epoch_reaching(curve),
            "best_val_miou": best.get("best_val_miou"),
            "test_miou": test.get("test_miou"),
            "test_fbiou": test.get("test_fbiou"),
            "epochs_run": best.get("epochs_run"),
            "wall_time_s": best.get("wall_time_s"),
            "initial_val_miou": best.get("initial_val_miou"),
            "status": "done" if best and test else ("fit only" if best else "missing"),
            "run_dir": str(run.root),
            "curve": curve,
            "per_class_iou": test.get("per_class_iou", {}),
        }
        records.append(record)
    return records


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(records: list[dict[str, Any]], folds: list[int]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (variant, fold), and per variant over everything (fold ``mean``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["variant"], str(r["fold"]))].append(r)
        groups[(r["variant"], "mean")].append(r)
    rows = []
    for (variant, fold), members in groups.items():
        row: dict[str, Any] = {
            "variant": variant,
            "fold": fold,
            "runs": sum(m["status"] == "done" for m in members),
        }
        for key, _ in MEASURES:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([m[key] for m in members])
        rows.append(row)
    order = {str(f): i for i, f in enumerate(folds)} | {"mean": len(folds)}
    variants = list(dict.fromkeys(r["variant"] for r in records))
    return sorted(rows, key=lambda r: (variants.index(r["variant"]), order[r["fold"]]))


def _cell(mean: float | None, std: float | None, key: str) -> str:
    if mean is None:
        return "–"
    whole = key == "wall_time_s" or (not std and float(mean).is_integer())
    digits = 0 if whole else 1
    text = f"{mean:.{digits}f}"
    return text if not std else f"{text} ± {std:.{digits}f}"


def markdown(study: Study, summary: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """The study's Markdown report: one table per measure, rows = variants, columns = folds / mean."""
    cells = {(r["variant"], r["fold"]): r for r in summary}
    variants = list(dict.fromkeys(r["variant"] for r in summary))
    columns = [str(f) for f in study.folds] + ["mean"]
    done = sum(r["status"] == "done" for r in records)
    lines = [
        f"# Study `{study.name}`",
        "",
        f"Base config `{study.base_config}`; swept: "
        + ", ".join(f"`{o}` ∈ {{{', '.join(map(str, v))}}}" for o, v in study.sweep.items())
        + f"; folds {study.folds}; seeds {study.seeds}. Runs finished: {done}/{len(records)}. "
        "Cells: mean ± standard deviation over seeds (the mean column: over all folds and seeds).",
    ]
    for key, title in MEASURES:
        lines += [
            "",
            f"## {title}",
            "",
            "| method | " + " | ".join(f"fold{c}" if c != "mean" else "mean" for c in columns) + " |",
        ]
        lines.append("|---" * (len(columns) + 1) + "|")
        for variant in variants:
            row = [
                _cell(cells[(variant, c)][f"{key}_mean"], cells[(variant, c)][f"{key}_std"], key)
                for c in columns
            ]
            lines.append(f"| {variant} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def mean_curve(curves: list[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and standard deviation over the ``curves`` ({epoch: value}) that reach each epoch."""
    epochs = sorted(set().union(*curves)) if curves else []
    stats = [_mean_std([c.get(e) for c in curves]) for e in epochs]
    return epochs, [m for m, _ in stats], [s for _, s in stats]


def _with_initial(record: dict[str, Any]) -> dict[int, float]:
    initial = record.get("initial_val_miou")
    return record["curve"] if initial is None else {-1: float(initial), **record["curve"]}


def curves_figure(records: list[dict[str, Any]], folds: list[int], title: str = "") -> Figure:
    """val mIoU per epoch, a panel per fold, a line per variant (mean over seeds) with a ±std band.

    Uses matplotlib's object API (no pyplot state), so it is safe in notebooks and threads.
    """
    fig = Figure(figsize=(5.5 * len(folds), 4), layout="tight")
    variants = list(dict.fromkeys(r["variant"] for r in records))
    for k, fold in enumerate(folds):
        ax = fig.add_subplot(1, len(folds), k + 1)
        for i, variant in enumerate(variants):
            # the untrained model's score (full sanity check), when recorded, is drawn at epoch -1
            curves = [
                _with_initial(r)
                for r in records
                if r["variant"] == variant and r["fold"] == fold and r["curve"]
            ]
            if not curves:
                continue
            epochs, mean, std = mean_curve(curves)
            colour = f"C{i % 10}"
            ax.plot(epochs, mean, color=colour, marker=".", label=f"{variant} (n={len(curves)})")
            if len(curves) > 1:
                low = [m - s for m, s in zip(mean, std)]
                high = [m + s for m, s in zip(mean, std)]
                ax.fill_between(epochs, low, high, color=colour, alpha=0.2)
        ax.set_title(f"{title}: fold {fold}" if title else f"fold {fold}")
        ax.set_xlabel("epoch (-1: before training)")
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def plot_curves(study: Study, records: list[dict[str, Any]], path: Path) -> None:
    """Save :func:`curves_figure` of ``records`` as a PNG."""
    fig = curves_figure(records, study.folds, study.name)
    FigureCanvasAgg(fig).print_png(str(path))


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def report(study: Study) -> dict[str, Path]:
    """Write runs.csv, summary.csv, per_class_iou.csv, study.md and curves.png; return their paths."""
    out = study.output_dir
    out.mkdir(parents=True, exist_ok=True)
    records = collect(study)
    summary = summarize(records, study.folds)
    paths = {
        name: out / name
        for name in ("runs.csv", "summary.csv", "per_class_iou.csv", "study.md", "curves.png")
    }
    _write_csv(paths["runs.csv"], records, RUN_COLUMNS)
    summary_columns = ["variant", "fold", "runs"] + [f"{k}_{s}" for k, _ in MEASURES for s in ("mean", "std")]
    _write_csv(paths["summary.csv"], summary, summary_columns)
    per_class = [
        {"variant": r["variant"], "fold": r["fold"], "seed": r["seed"], "class": name, "iou": iou}
        for r in records
        for name, iou in r["per_class_iou"].items()
    ]
    _write_csv(paths["per_class_iou.csv"], per_class, ["variant", "fold", "seed", "class", "iou"])
    paths["study.md"].write_text(markdown(study, summary, records))
    plot_curves(study, records, paths["curves.png"])
    return paths


# ------------------------------------------------------------------------------------ command
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fss study",
        description="Run a convergence-speed study: one fss fit + test per variant, fold and seed, then "
        "tables (CSV, Markdown) and a curve plot in the study directory. See docs/study.md.",
    )
    parser.add_argument("--config", required=True, help="study config (YAML), e.g. configs/study_demo.yaml")
    parser.add_argument(
        "--output-dir", default=None, help="study directory (default: the config's output_dir)"
    )
    parser.add_argument(
        "--emit-commands",
        "--dry-run",
        action="store_true",
        help="print one `fss fit ... && fss test ...` line per run (for a cluster scheduler) and exit",
    )
    parser.add_argument(
        "--launcher",
        choices=["subprocess", "inprocess"],
        default="subprocess",
        help="run each fit/test in a fresh `python -m fss` process (default) or in this process",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (subprocess launcher only)")
    parser.add_argument(
        "--run-index",
        type=int,
        nargs="+",
        default=None,
        help="run only these runs (0-based, in --emit-commands order), e.g. $SLURM_ARRAY_TASK_ID",
    )
    parser.add_argument("--report-only", action="store_true", help="only (re)write the tables and plot")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``fss study``: returns 0 when every selected run is done, 1 when one failed."""
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("fss study: --jobs must be >= 1")
    try:
        study = Study.from_file(args.config, args.output_dir)
    except StudyConfigError as err:
        print(f"fss study: {err}", file=sys.stderr)
        return 2
    runs = study.runs()
    if args.run_index is not None:
        bad = [i for i in args.run_index if not 0 <= i < len(runs)]
        if bad:
            print(f"fss study: --run-index {bad} out of range [0, {len(runs)})", file=sys.stderr)
            return 2
    if args.emit_commands:
        pretrain = study.pretrain_args()
        if pretrain is not None:
            print(f"# first, once: {command_line(pretrain)}")
        for i, run in enumerate(runs):
            if args.run_index is None or i in args.run_index:
                print(f"{command_line(study.args(run, 'fit'))} && {command_line(study.args(run, 'test'))}")
        return 0
    statuses: dict[str, str] = {}
    if not args.report_only:
        statuses = run_study(study, args.launcher, args.jobs, args.run_index)
    paths = report(study)
    print(f"[study] tables: {paths['study.md']}, {paths['runs.csv']}; curves: {paths['curves.png']}")
    failed = {name: s for name, s in statuses.items() if s.startswith("failed")}
    for name, status in failed.items():
        print(f"[study] {name}: {status}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
