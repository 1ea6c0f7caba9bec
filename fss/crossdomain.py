"""``fss crossdomain``: test one checkpoint on every cross-domain target, 1- and 5-shot, and write the table.

::

    fss crossdomain --config configs/crossdomain.yaml --ckpt_path runs/pascal20_hsnet_hm/.../best.ckpt
    fss crossdomain --config configs/crossdomain_synthetic.yaml --ckpt_path runs/demo/.../best-epoch=11.ckpt

Config (YAML)::

    name: hsnet-hm                    # the table's row label (default: the source config's stem)
    source: pascal20_hsnet_hm.yaml    # the training config: its model/trainer sections build the test
                                      # (a path relative to this file, else to the working directory)
    data_root: data/cdfss             # the ``root`` of every target that sets none (PATNet's --datapath)
    output_dir: runs/crossdomain/hsnet-hm
    shots: [1, 5]
    seeds: [0]                        # data.seed of the test episodes; several: mean ± std over them
    overrides: {trainer.precision: 16-mixed}   # options of every test run
    wandb: {project: fss-crossdomain, offline: true}   # or false
    targets:                          # column label -> a data module (class_path, init_args)
      Deepglobe: {class_path: fss.data.DeepglobeDataModule, init_args: {episode_order: patnet}}

Every (target, shot, seed) is one ``fss test`` run in ``<output_dir>/runs/<target>/<K>shot-seed<S>/``
(its config ``test_config.yaml``, the CSVLogger's ``test/metrics.csv`` and
:class:`~fss.callbacks.TestResultsWriter`'s ``test/test_results.json``); finished runs are skipped, so
an interrupted command continues where it stopped. Then ``<output_dir>`` gets

* ``crossdomain.md``: mIoU and FB-IoU in the papers' layout (a row per shot, a column per target
  and the mean over targets) and per-class IoU of every target with at most 20 classes;
* ``results.csv`` (one row per run) and ``per_class_iou.csv`` (one row per run and class);
* a W&B run (``job_type: crossdomain``) with both tables and the mean mIoU per shot.

Options after the known ones (``--trainer.accelerator cpu``, ``--data.init_args.test_episodes 50``)
are passed to every ``fss test``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fss.study.config import cli_value, command_line
from fss.study.runner import Launcher, _execute
from fss.study.tables import mean_std, write_csv

CONFIG_KEYS = {"name", "source", "data_root", "output_dir", "shots", "seeds", "overrides", "wandb", "targets"}
#: targets with more classes than this get no per-class table in the Markdown (the CSV has them all)
MAX_CLASSES_IN_MARKDOWN = 20
RESULT_COLUMNS = ("target", "shot", "seed", "miou", "fbiou", "run_dir")


class CrossDomainConfigError(ValueError):
    """The crossdomain config is malformed (the message names the file and the option)."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "target"


@dataclass
class CrossDomain:
    """A parsed crossdomain config (see the module docstring)."""

    name: str
    source: Path
    output_dir: Path
    targets: dict[str, dict[str, Any]]
    shots: list[int] = field(default_factory=lambda: [1, 5])
    seeds: list[int] = field(default_factory=lambda: [0])
    data_root: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    wandb: dict[str, Any] | None = None

    @classmethod
    def from_file(cls, path: str | Path, **replace: Any) -> CrossDomain:
        """Read a config; keyword arguments that are not None replace its options."""
        path = Path(path)
        if not path.is_file():
            raise CrossDomainConfigError(f"crossdomain config not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise CrossDomainConfigError(f"{path}: a crossdomain config is a mapping (source, targets, ...)")
        unknown = set(raw) - CONFIG_KEYS
        if unknown:
            raise CrossDomainConfigError(
                f"{path}: unknown option(s) {sorted(unknown)}; valid: {sorted(CONFIG_KEYS)}"
            )
        raw.update({k: v for k, v in replace.items() if v is not None})
        if "source" not in raw:
            raise CrossDomainConfigError(f"{path}: missing `source:` (the training config of the checkpoint)")
        source = Path(str(raw["source"]))
        if not source.is_absolute() and (path.parent / source).is_file():
            source = path.parent / source
        if not source.is_file():
            raise CrossDomainConfigError(
                f"{path}: `source: {raw['source']}` not found (relative to {path.parent} or .)"
            )
        targets = raw.get("targets")
        if not isinstance(targets, dict) or not targets:
            raise CrossDomainConfigError(
                f"{path}: `targets:` maps column labels to data modules (class_path, init_args)"
            )
        for label, target in targets.items():
            if not isinstance(target, dict) or "class_path" not in target:
                raise CrossDomainConfigError(
                    f"{path}: targets.{label} needs a class_path (e.g. fss.data.DeepglobeDataModule)"
                )
        lists = {}
        for key, default in (("shots", [1, 5]), ("seeds", [0])):
            values = raw.get(key, default)
            values = values if isinstance(values, list) else [values]
            if not values or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
            ):
                raise CrossDomainConfigError(
                    f"{path}: `{key}:` must be a list of non-negative integers, got {values!r}"
                )
            lists[key] = values
        wandb = raw.get("wandb", False)
        if wandb is True:
            wandb = {"project": "fss-crossdomain"}
        if wandb is not False and wandb is not None and not isinstance(wandb, dict):
            raise CrossDomainConfigError(f"{path}: `wandb:` is false or a mapping (project, entity, offline)")
        name = str(raw.get("name") or source.stem)
        return cls(
            name=name,
            source=source,
            output_dir=Path(raw.get("output_dir") or Path("runs") / "crossdomain" / _slug(name)),
            targets=targets,
            shots=lists["shots"],
            seeds=lists["seeds"],
            data_root=raw.get("data_root"),
            overrides=dict(raw.get("overrides") or {}),
            wandb=wandb or None,
        )

    # ------------------------------------------------------------------ runs
    def run_dir(self, target: str, shot: int, seed: int) -> Path:
        return self.output_dir / "runs" / _slug(target) / f"{shot}shot-seed{seed}"

    def runs(self) -> list[tuple[str, int, int]]:
        """(target, shot, seed) of every run: target-major, then shot, then seed."""
        return [(t, k, s) for t in self.targets for k in self.shots for s in self.seeds]

    def test_config(self, target: str, shot: int, seed: int) -> dict[str, Any]:
        """The source config with ``data`` replaced by the target (shot, seed, root set)."""
        config = yaml.safe_load(self.source.read_text()) or {}
        data = json.loads(json.dumps(self.targets[target]))  # a deep copy
        init_args = data.setdefault("init_args", {}) or {}
        data["init_args"] = init_args
        if "root" not in init_args and self.data_root is not None:
            init_args["root"] = self.data_root
        init_args["shot"] = shot
        init_args["seed"] = seed
        config["data"] = data
        trainer = config.setdefault("trainer", {}) or {}
        config["trainer"] = trainer
        run = self.run_dir(target, shot, seed)
        trainer["default_root_dir"] = str(run)
        trainer["logger"] = [
            {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": str(run), "name": "", "version": "test"},
            }
        ]
        return config

    def args(self, target: str, shot: int, seed: int, ckpt_path: str, extra: list[str]) -> list[str]:
        """The ``fss test`` arguments of one run (writes its ``test_config.yaml``)."""
        run = self.run_dir(target, shot, seed)
        run.mkdir(parents=True, exist_ok=True)
        config_path = run / "test_config.yaml"
        config_path.write_text(yaml.safe_dump(self.test_config(target, shot, seed), sort_keys=False))
        args = ["test", "--config", str(config_path)]
        for key, value in self.overrides.items():
            args += [f"--{key}", cli_value(value)]
        return [*args, *extra, "--ckpt_path", ckpt_path]

    def results_path(self, target: str, shot: int, seed: int) -> Path:
        return self.run_dir(target, shot, seed) / "test" / "test_results.json"


# ------------------------------------------------------------------------------------------ tables
def collect(cd: CrossDomain) -> list[dict[str, Any]]:
    """One record per finished run: target, shot, seed, miou, fbiou, per_class_iou, run_dir."""
    records = []
    for target, shot, seed in cd.runs():
        path = cd.results_path(target, shot, seed)
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        records.append(
            {
                "target": target,
                "shot": shot,
                "seed": seed,
                "miou": result["test_miou"],
                "fbiou": result["test_fbiou"],
                "per_class_iou": result.get("per_class_iou", {}),
                "run_dir": str(cd.run_dir(target, shot, seed)),
            }
        )
    return records


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {std:.1f}"


def markdown(cd: CrossDomain, records: list[dict[str, Any]]) -> str:
    """The tables in the papers' layout (see the module docstring)."""
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault((r["target"], r["shot"]), []).append(r)
    targets = list(cd.targets)
    spread = "mean ± standard deviation over the test seeds" if len(cd.seeds) > 1 else "one test seed"
    lines = [
        f"# Cross-domain test of `{cd.name}`",
        "",
        f"Source config `{cd.source}`; seeds {cd.seeds} ({spread}); runs finished: {len(records)}"
        f"/{len(cd.runs())}. Mean: over the targets (of each seed's values).",
    ]
    for measure, title in (("miou", "mIoU (%)"), ("fbiou", "FB-IoU (%)")):
        lines += ["", f"## {title}", "", "| method | shot | " + " | ".join(targets) + " | Mean |"]
        lines.append("|---" * (len(targets) + 3) + "|")
        for shot in cd.shots:
            cells = [_cell([r[measure] for r in by_key.get((t, shot), [])]) for t in targets]
            complete = all(len(by_key.get((t, shot), [])) == len(cd.seeds) for t in targets)
            means = []
            if complete:
                for seed in cd.seeds:
                    values = [r[measure] for t in targets for r in by_key[(t, shot)] if r["seed"] == seed]
                    means.append(sum(values) / len(values))
            lines.append(f"| {cd.name} | {shot} | " + " | ".join(cells) + f" | {_cell(means)} |")
    for target in targets:
        names = list(dict.fromkeys(n for r in records if r["target"] == target for n in r["per_class_iou"]))
        if not names or len(names) > MAX_CLASSES_IN_MARKDOWN:
            continue
        lines += [
            "",
            f"## {target}: IoU per class (%)",
            "",
            "| class | " + " | ".join(f"{k}-shot" for k in cd.shots) + " |",
        ]
        lines.append("|---" * (len(cd.shots) + 1) + "|")
        for name in names:
            cells = [
                _cell(
                    [
                        r["per_class_iou"][name]
                        for r in by_key.get((target, k), [])
                        if name in r["per_class_iou"]
                    ]
                )
                for k in cd.shots
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def log_wandb(cd: CrossDomain, records: list[dict[str, Any]], per_class: list[dict[str, Any]]) -> None:
    """One W&B run with the results and per-class tables and the mean mIoU per shot."""
    import wandb

    settings = dict(cd.wandb or {})
    mode = "offline" if settings.pop("offline", False) else None
    run = wandb.init(
        project=settings.pop("project", "fss-crossdomain"),
        name=cd.name,
        job_type="crossdomain",
        dir=str(cd.output_dir),
        mode=mode,
        config={"source": str(cd.source), "shots": cd.shots, "seeds": cd.seeds, "targets": list(cd.targets)},
        **settings,
    )
    try:
        columns = [c for c in RESULT_COLUMNS if c != "run_dir"]
        run.log(
            {
                "crossdomain/results": wandb.Table(
                    columns=columns, data=[[r[c] for c in columns] for r in records]
                ),
                "crossdomain/per_class_iou": wandb.Table(
                    columns=["target", "shot", "seed", "class", "iou"],
                    data=[[r[c] for c in ("target", "shot", "seed", "class", "iou")] for r in per_class],
                ),
            }
        )
        for r in records:
            run.summary[f"{r['target']}/{r['shot']}shot/seed{r['seed']}/miou"] = r["miou"]
    finally:
        run.finish()


def report(cd: CrossDomain, use_wandb: bool = True) -> dict[str, Path]:
    """Write crossdomain.md, results.csv and per_class_iou.csv (and the W&B run); return the paths."""
    cd.output_dir.mkdir(parents=True, exist_ok=True)
    records = collect(cd)
    per_class = [
        {"target": r["target"], "shot": r["shot"], "seed": r["seed"], "class": name, "iou": iou}
        for r in records
        for name, iou in r["per_class_iou"].items()
    ]
    paths = {name: cd.output_dir / name for name in ("crossdomain.md", "results.csv", "per_class_iou.csv")}
    write_csv(paths["results.csv"], records, RESULT_COLUMNS)
    write_csv(paths["per_class_iou.csv"], per_class, ["target", "shot", "seed", "class", "iou"])
    paths["crossdomain.md"].write_text(markdown(cd, records))
    if use_wandb and cd.wandb:
        log_wandb(cd, records, per_class)
    return paths


# ------------------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    """``fss crossdomain --config X.yaml --ckpt_path CKPT [options] [fss test options]``; 1 if a run failed."""
    parser = argparse.ArgumentParser(
        prog="fss crossdomain",
        description="Test one checkpoint on every cross-domain target of the config, each shot and seed "
        "(one fss test per run, finished runs skipped), then write the table (Markdown, CSV, W&B). "
        "Unknown --options go to every fss test. See docs/datasets.md.",
    )
    parser.add_argument("--config", required=True, help="crossdomain config, e.g. configs/crossdomain.yaml")
    parser.add_argument("--ckpt_path", "--ckpt-path", default=None, help="the checkpoint to test")
    parser.add_argument("--source", default=None, help="replaces the config's source (the training config)")
    parser.add_argument("--data_root", "--data-root", default=None, help="replaces the config's data_root")
    parser.add_argument("--output_dir", "--output-dir", default=None, help="replaces the config's output_dir")
    parser.add_argument("--name", default=None, help="the table's row label")
    parser.add_argument("--shots", type=int, nargs="+", default=None, help="replaces the config's shots")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="replaces the config's seeds")
    parser.add_argument(
        "--targets", nargs="+", default=None, help="only these targets (labels of the config)"
    )
    parser.add_argument("--launcher", choices=["subprocess", "inprocess"], default="subprocess")
    parser.add_argument("--report-only", action="store_true", help="only (re)write the tables")
    parser.add_argument("--no-wandb", action="store_true", help="write no W&B run")
    args, extra = parser.parse_known_args(argv)
    try:
        cd = CrossDomain.from_file(
            args.config,
            source=args.source,
            data_root=args.data_root,
            output_dir=args.output_dir,
            name=args.name,
            shots=args.shots,
            seeds=args.seeds,
        )
    except CrossDomainConfigError as err:
        print(f"fss crossdomain: {err}", file=sys.stderr)
        return 2
    if args.targets:
        missing = [t for t in args.targets if t not in cd.targets]
        if missing:
            print(
                f"fss crossdomain: --targets {missing} not in the config ({list(cd.targets)})",
                file=sys.stderr,
            )
            return 2
        cd.targets = {t: cd.targets[t] for t in args.targets}
    failed = []
    if not args.report_only:
        if args.ckpt_path is None or not Path(args.ckpt_path).is_file():
            print(f"fss crossdomain: --ckpt_path {args.ckpt_path} is not a file", file=sys.stderr)
            return 2
        launcher: Launcher = args.launcher
        for target, shot, seed in cd.runs():
            if cd.results_path(target, shot, seed).is_file():
                print(f"[crossdomain] {target} {shot}-shot seed {seed}: done (skipped)", flush=True)
                continue
            run_args = cd.args(target, shot, seed, args.ckpt_path, extra)
            print(f"[crossdomain] {target} {shot}-shot seed {seed}: {command_line(run_args)}", flush=True)
            try:
                _execute(run_args, launcher, cd.run_dir(target, shot, seed) / "test.log")
            except (Exception, SystemExit) as err:  # keep going: report failures at the end
                print(
                    f"[crossdomain] {target} {shot}-shot seed {seed} FAILED: {err}",
                    file=sys.stderr,
                    flush=True,
                )
                failed.append((target, shot, seed))
    paths = report(cd, use_wandb=not args.no_wandb)
    print(paths["crossdomain.md"].read_text())
    print(
        f"[crossdomain] tables: {paths['crossdomain.md']}, {paths['results.csv']}, {paths['per_class_iou.csv']}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
