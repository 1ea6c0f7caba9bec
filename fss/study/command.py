"""``fss study``: the command line (parsing, dry runs / command lists, running, reporting)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fss.study.cluster import submit, write_slurm
from fss.study.config import Study, StudyConfigError, command_line
from fss.study.plots import plot_curves
from fss.study.runner import run_study
from fss.study.tables import MEASURES, RUN_COLUMNS, SPREAD_MEASURES, collect, markdown, summarize, write_csv


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
    write_csv(paths["runs.csv"], records, RUN_COLUMNS)
    summary_columns = ["variant", "fold", "runs"] + [f"{k}_{s}" for k, _ in MEASURES for s in ("mean", "std")]
    summary_columns += [f"{k}_ci95_{s}" for k in SPREAD_MEASURES for s in ("low", "high", "over")]
    write_csv(paths["summary.csv"], summary, summary_columns)
    per_class = [
        {"variant": r["variant"], "fold": r["fold"], "seed": r["seed"], "class": name, "iou": iou}
        for r in records
        for name, iou in r["per_class_iou"].items()
    ]
    write_csv(paths["per_class_iou.csv"], per_class, ["variant", "fold", "seed", "class", "iou"])
    paths["study.md"].write_text(markdown(study, summary, records))
    plot_curves(study, records, paths["curves.png"])
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fss study",
        description="Run a convergence-speed study: one fss fit + test per variant, fold and seed, then "
        "tables (CSV, Markdown) and a curve plot in the study directory. See docs/study.md.",
        allow_abbrev=False,  # an option prefix is never taken for the option
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
    parser.add_argument(
        "--write-slurm",
        action="store_true",
        help="write commands.txt and a SLURM array script study.sbatch (resources from the config's "
        "`slurm:` mapping) into the study directory and exit",
    )
    parser.add_argument(
        "--submit",
        action="store_true",
        help='submit the runs as a SLURM array with submitit (pip install "fss[cluster]"), wait, report',
    )
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
        if study.stage1 is not None:
            folds = sorted(
                {r.fold for i, r in enumerate(runs) if args.run_index is None or i in args.run_index}
            )
            for fold in folds:
                print(
                    f"# first stage of fold {fold}, before its runs: {command_line(study.stage1_args(fold))}"
                )
        for i, run in enumerate(runs):
            if args.run_index is None or i in args.run_index:
                print(f"{command_line(study.args(run, 'fit'))} && {command_line(study.args(run, 'test'))}")
        return 0
    if args.write_slurm:
        paths = write_slurm(study, args.config, study.slurm)
        print(f"[study] {len(runs)} runs: {paths['commands']}; submit with: sbatch {paths['sbatch']}")
        return 0
    statuses: dict[str, str] = {}
    if args.submit:
        try:
            jobs = submit(study, args.config, study.slurm, args.run_index)
        except ModuleNotFoundError as err:
            print(f"fss study: {err}", file=sys.stderr)
            return 2
        print(f"[study] submitted {len(jobs)} array tasks (job {jobs[0].job_id if jobs else '-'}); waiting")
        indices = args.run_index if args.run_index is not None else range(len(runs))
        for index, job in zip(indices, jobs):
            try:
                statuses[runs[index].name] = job.result()
            except Exception as err:  # a failed task: report it with the others
                statuses[runs[index].name] = f"failed: {err}"
    elif not args.report_only:
        statuses = run_study(study, args.launcher, args.jobs, args.run_index)
    paths = report(study)
    print(f"[study] tables: {paths['study.md']}, {paths['runs.csv']}; curves: {paths['curves.png']}")
    failed = {name: s for name, s in statuses.items() if s.startswith("failed")}
    for name, status in failed.items():
        print(f"[study] {name}: {status}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
