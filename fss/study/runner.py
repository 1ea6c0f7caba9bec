"""Running a study's runs: one ``fss fit`` + ``fss test`` each, in subprocesses or in this process.

Finished runs are skipped; a run interrupted during fit resumes from its ``last.ckpt``. With a
``stage1:`` the first stage of a run's fold is fitted first, once: runs of the same fold that start
together (``--jobs``, SLURM array tasks) wait on a lock file in its directory for the one that fits it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from fss.atomic import write_text
from fss.study.config import Run, Study, command_line

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
            code = command(args)
        finally:
            sys.argv = argv
        if code:  # the command printed its error message
            raise RuntimeError(f"`{command_line(args[:3])} ...` failed (exit {code}); its message is above")
        return
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(['python', '-m', module, *args])}\n")
        out.flush()
        proc = subprocess.run([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"`{command_line(args[:3])} ...` failed (exit {proc.returncode}); see {log}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: other processes and
    threads that take it wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_first_stage(study: Study, fold: int, launcher: Launcher = "subprocess") -> str:
    """Fit the first stage of ``fold`` unless done (resuming from its ``last.ckpt``); return its status.

    When the fit ends, ``done.json`` (the checkpoint the runs receive, the time) marks it finished.
    """
    stage = study.stage1_run(fold)
    with _locked(stage.root / ".lock"):
        if study.stage1_done(fold):
            return "skipped"
        start = time.monotonic()
        resumed = stage.last_ckpt.is_file()
        _execute(study.stage1_args(fold, resume=True), launcher, stage.root / "fit.log")
        checkpoint = study.stage1_checkpoint(fold)
        if not checkpoint.is_file():
            raise RuntimeError(
                f"the first stage of fold {fold} ended without {checkpoint}: check stage1.checkpoint "
                f"(`last` or `best`) and the stage config's checkpoint options; log: {stage.root / 'fit.log'}"
            )
        record = {
            "checkpoint": str(checkpoint),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.monotonic() - start, 1),
        }
        write_text(stage.root / "done.json", json.dumps(record, indent=2) + "\n")
    status = "resumed" if resumed else "ran"
    print(f"[study] first stage of fold {fold}: {status}, {checkpoint}", flush=True)
    return status


def run_one(study: Study, run: Run, launcher: Launcher = "subprocess") -> str:
    """Fit (resuming from ``last.ckpt``) and test ``run`` unless already done; return its status.

    With a ``stage1:``, the first stage of the run's fold is fitted first when it is not done yet.
    """
    if run.fit_done and run.test_done:
        return "skipped"
    start = time.monotonic()
    if study.stage1 is not None and not run.fit_done:
        try:
            run_first_stage(study, run.fold, launcher)
        except (Exception, SystemExit) as err:
            raise RuntimeError(f"the first stage of fold {run.fold} failed: {err}") from err
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


def run_one_by_index(config: str, output_dir: str, index: int) -> str:
    """Run run ``index`` of the study ``config`` (the entry point of a ``submitit`` array task)."""
    study = Study.from_file(config, output_dir)
    return run_one(study, study.runs()[index])
