"""A study on a cluster: a ready SLURM array script, or submission through ``submitit``.

Both run each array task as ``fss study --config X --run-index I``, so a task keeps the study's
skip / resume logic (a preempted or requeued task resumes from its ``last.ckpt``). The resources
come from the study config's ``slurm:`` mapping (:class:`fss.study.config.SlurmOptions`)::

    slurm:
      partition: gpu
      time: "2-00:00:00"          # or minutes as an integer
      gpus_per_node: 1
      cpus_per_task: 8
      mem: 64G
      account: my-lab             # optional
      setup: ["source .venv/bin/activate", "export WANDB_MODE=offline"]
      extra: {constraint: a100}   # any other #SBATCH option

``fss study --config X --write-slurm`` writes ``commands.txt`` (one ``fss fit ... && fss test ...``
line per run; with a ``stage1:`` also ``stage1_commands.txt``, one fit per fold to run before them)
and ``study.sbatch`` into the study directory; ``sbatch study.sbatch`` then runs the
whole array. ``fss study --config X --submit`` submits the same array with ``submitit`` (an optional
dependency: ``pip install "fss[cluster]"``) and waits for it, then writes the tables.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from fss.study.config import SlurmOptions, Study, command_line


def study_command(study: Study, config: str | Path, index: str) -> list[str]:
    """``fss study`` arguments that run one task (``index``: a number or ``$SLURM_ARRAY_TASK_ID``)."""
    args = ["study", "--config", str(config), "--output-dir", str(study.output_dir), "--run-index", index]
    return args


def sbatch_script(study: Study, config: str | Path, options: SlurmOptions) -> str:
    """The text of an ``sbatch`` array script that runs every run of ``study``, one per task."""
    runs = len(study.runs())
    array = f"0-{runs - 1}" + (f"%{options.max_parallel}" if options.max_parallel else "")
    logs = study.output_dir / "slurm"
    directives = {
        "job-name": options.job_name or study.name,
        "array": array,
        "time": options.time if isinstance(options.time, str) else f"{options.time}",
        "gres": f"gpu:{options.gpus_per_node}" if options.gpus_per_node else None,
        "cpus-per-task": options.cpus_per_task,
        "partition": options.partition,
        "account": options.account,
        "mem": options.mem,
        "output": f"{logs}/%x-%A_%a.out",
        **{str(k).replace("_", "-"): v for k, v in options.extra.items()},
    }
    lines = [
        "#!/bin/bash",
        f"# {study.name}: {runs} runs, one per array task (written by `fss study --write-slurm`)",
    ]
    lines += [f"#SBATCH --{key}={value}" for key, value in directives.items() if value is not None]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}", *options.setup]
    pretrain = study.pretrain_args()
    if pretrain is not None:
        lines.append(f"# the backbone pretraining must have run once before: {command_line(pretrain)}")
    if study.stage1 is not None:
        lines.append(
            "# each fold's first stage (stage1:) is fitted by the first of its tasks; the others wait for it"
        )
    run = command_line(study_command(study, config, "$SLURM_ARRAY_TASK_ID"))
    lines.append(run.replace("'$SLURM_ARRAY_TASK_ID'", '"$SLURM_ARRAY_TASK_ID"'))
    lines.append(
        f"# when every task is done: {command_line(['study', '--config', str(config), '--report-only'])}"
    )
    return "\n".join(lines) + "\n"


def write_slurm(study: Study, config: str | Path, options: SlurmOptions) -> dict[str, Path]:
    """Write ``commands.txt`` and ``study.sbatch`` into the study directory; return their paths."""
    out = study.output_dir
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    commands = out / "commands.txt"
    lines = [
        f"{command_line(study.args(run, 'fit'))} && {command_line(study.args(run, 'test'))}"
        for run in study.runs()
    ]
    commands.write_text("\n".join(lines) + "\n")
    paths = {"commands": commands}
    if study.stage1 is not None:  # to be run before commands.txt when not going through `fss study`
        paths["stage1_commands"] = out / "stage1_commands.txt"
        folds = sorted({run.fold for run in study.runs()})
        paths["stage1_commands"].write_text("".join(f"{command_line(study.stage1_args(f))}\n" for f in folds))
    script = out / "study.sbatch"
    script.write_text(sbatch_script(study, config, options))
    script.chmod(0o755)
    return {**paths, "sbatch": script}


def submit(
    study: Study, config: str | Path, options: SlurmOptions, indices: list[int] | None = None
) -> list[Any]:
    """Submit the runs as a SLURM array with ``submitit``; return the jobs (``job.result()`` waits).

    Raises:
        ModuleNotFoundError: naming the extra to install when ``submitit`` is missing.
    """
    try:
        import submitit
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            'fss study --submit needs submitit: pip install "fss[cluster]" (or use --write-slurm and sbatch)'
        ) from None
    from fss.study.runner import run_one_by_index

    executor = submitit.AutoExecutor(folder=str(study.output_dir / "slurm" / "submitit"))
    params: dict[str, Any] = {
        "name": options.job_name or study.name,
        "timeout_min": options.minutes(),
        "gpus_per_node": options.gpus_per_node,
        "cpus_per_task": options.cpus_per_task,
        "slurm_array_parallelism": options.max_parallel or len(study.runs()),
    }
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.account:
        params["slurm_account"] = options.account
    if options.mem:
        params["slurm_mem"] = options.mem
    if options.extra:
        params["slurm_additional_parameters"] = dict(options.extra)
    if options.setup:
        params["slurm_setup"] = list(options.setup)
    executor.update_parameters(**params)
    selected = indices if indices is not None else list(range(len(study.runs())))
    return executor.map_array(
        run_one_by_index, [str(config)] * len(selected), [str(study.output_dir)] * len(selected), selected
    )
