"""``fss study``: a tiny real study (2 variants, 1 fold, 1 seed, 64 px, 2 epochs) run in-process."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fss import study as study_mod
from fss.cli import main as fss_main
from fss.study import Study, epoch_reaching, read_curve, runner, summarize

REPO = Path(__file__).resolve().parents[1]

#: overrides of configs/demo.yaml that make a run take a couple of seconds
TINY_OVERRIDES = {
    "data.init_args.img_size": 64,
    "data.init_args.batch_size": 2,
    "data.init_args.train_episodes": 4,
    "data.init_args.val_episodes": 2,
    "data.init_args.test_episodes": 4,
    "data.init_args.test_seeds": [0, 1],  # two test episode sets per run: their spread reaches the tables
    "trainer.max_epochs": 2,
    "trainer.accelerator": "cpu",
    "trainer.num_sanity_val_steps": 0,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "trainer.log_every_n_steps": 1,
}


def write_tiny_study(directory: Path, wandb: bool = True) -> Path:
    """A study config over configs/demo.yaml: masking fm and hm, fold 0, seed 0; returns its path."""
    config = {
        "name": "tiny",
        "base": str(REPO / "configs" / "demo.yaml"),
        "output_dir": str(directory / "study"),
        "sweep": {"model.masking": ["fm", "hm"]},
        "folds": [0],
        "seeds": [0],
        "overrides": TINY_OVERRIDES,
        "wandb": {"project": "fss-test", "offline": True} if wandb else False,
    }
    path = directory / "tiny_study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_tiny_study(directory: Path, wandb: bool = True) -> Path:
    """Run the tiny study in-process; return the study directory."""
    config = write_tiny_study(directory, wandb)
    argv = sys.argv
    try:
        assert study_mod.main(["--config", str(config), "--launcher", "inprocess"]) == 0
    finally:
        sys.argv = argv
    return directory / "study"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        return run_tiny_study(tmp_path_factory.mktemp("study"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_study_writes_tables_plot_and_per_class_iou(tiny: Path) -> None:
    rows = read_rows(tiny / "runs.csv")
    assert [(r["variant"], r["fold"], r["seed"], r["status"]) for r in rows] == [
        ("fm", "0", "0", "done"),
        ("hm", "0", "0", "done"),
    ]
    for row in rows:
        assert row["best_epoch"] in ("0", "1") and row["epochs_run"] == "2"
        assert 0 <= float(row["test_miou"]) <= 100 and 0 <= float(row["test_fbiou"]) <= 100
        assert float(row["wall_time_s"]) > 0 and row["epoch_95"] in ("0", "1")
        run = Path(row["run_dir"])
        assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert len(read_curve(run / "fit" / "metrics.csv")) == 2  # val mIoU of epochs 0 and 1
        assert list((run / "wandb").glob("offline-run-*")), "no offline W&B run"
        # the test run scored the best checkpoint, on the held-out fold's classes only
        results = json.loads((run / "test" / "test_results.json").read_text())
        assert results["test_miou"] == pytest.approx(float(row["test_miou"]))
        assert row["test_sets"] == "2" and results["episode_sets"] == ["seed0", "seed1"]
        low, high = float(row["test_miou_ci95_low"]), float(row["test_miou_ci95_high"])
        assert low <= float(row["test_miou"]) <= high
        fold0 = {f"{name}" for name in _fold_class_names(0)}
        assert results["per_class_iou"] and set(results["per_class_iou"]) <= fold0
    summary = read_rows(tiny / "summary.csv")
    assert [(r["variant"], r["fold"]) for r in summary] == [
        ("fm", "0"),
        ("fm", "mean"),
        ("hm", "0"),
        ("hm", "mean"),
    ]
    assert {r["test_miou_ci95_over"] for r in summary} == {"episode sets"}  # one run per group here
    markdown = (tiny / "study.md").read_text()
    test_rows = markdown.split("## Test mIoU")[1].split("##")[0]
    assert test_rows.count(" [") == 4  # every test cell carries its 95% interval
    assert "## Number of best epochs" in markdown and "| method | fold0 | mean |" in markdown
    assert "| fm |" in markdown and "| hm |" in markdown and "Runs finished: 2/2" in markdown
    assert (tiny / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = read_rows(tiny / "per_class_iou.csv")
    assert {r["variant"] for r in per_class} == {"fm", "hm"}


def _fold_class_names(fold: int) -> list[str]:
    from fss.data.synthetic import CLASS_NAMES, SyntheticFSS

    return [CLASS_NAMES[c] for c in SyntheticFSS.split_class_ids("val", fold)]


@pytest.mark.slow
def test_resume_skips_finished_runs_and_restarts_interrupted_ones(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = Study.from_file(tiny.parent / "tiny_study.yaml")
    fm, hm = study.runs()
    calls: list[list[str]] = []
    real_execute = runner._execute

    def spy(args: list[str], launcher: str, log: Path) -> None:
        calls.append(list(args))
        real_execute(args, launcher, log)

    monkeypatch.setattr(runner, "_execute", spy)
    monkeypatch.setattr(sys, "argv", ["fss"])
    # every run finished: nothing is executed
    assert study_mod.run_study(study, "inprocess") == {fm.name: "skipped", hm.name: "skipped"}
    assert calls == []
    # hm "interrupted" during fit: no best.json, no test results, but its last.ckpt is there
    (hm.root / "fit" / "best.json").unlink()
    (hm.test_dir / "test_results.json").unlink()
    epochs_before = hm.curve()
    assert sorted(epochs_before) == [0, 1]
    statuses = study_mod.run_study(study, "inprocess")
    assert statuses == {fm.name: "skipped", hm.name: "resumed"}
    assert [c[0] for c in calls] == ["fit", "test"]
    fit_args = calls[0]
    assert fit_args[fit_args.index("--ckpt_path") + 1] == str(hm.last_ckpt)
    assert "--model.masking" in fit_args and fit_args[fit_args.index("--model.masking") + 1] == "hm"
    assert hm.fit_done and hm.test_done
    # the resumed fit continues in fit/: its metrics.csv keeps the finished epochs, once each
    assert [d.name for d in hm.fit_dirs] == ["fit"]
    assert hm.best_json == hm.root / "fit" / "best.json"
    assert json.loads(hm.best_json.read_text())["epochs_run"] == 2
    assert hm.curve() == epochs_before
    # ... and in the same W&B run: in time order the offline runs are fit, test, resumed fit, test,
    # and the resumed fit carries the first fit's run id
    ids = [p.name.rsplit("-", 1)[-1] for p in sorted((hm.root / "wandb").glob("offline-run-*"))]
    assert len(ids) == 4 and ids[2] == ids[0] and len(set(ids)) == 3


def test_emit_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny_study(tmp_path)
    assert study_mod.main(["--config", str(config), "--emit-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2  # one line per run
    for masking, line in zip(["fm", "hm"], lines):
        fit, test = line.split(" && ")
        fit_args, test_args = shlex.split(fit), shlex.split(test)
        assert fit_args[:2] == ["fss", "fit"] and test_args[:2] == ["fss", "test"]
        root = tmp_path / "study" / "runs" / masking / "fold0-seed0"
        for args in (fit_args, test_args):
            assert args[args.index("--model.masking") + 1] == masking
            assert args[args.index("--trainer.default_root_dir") + 1] == str(root)
            assert args[args.index("--seed_everything") + 1] == "0"
            loggers = json.loads(args[args.index("--trainer.logger") + 1])
            assert loggers[0]["init_args"]["save_dir"] == str(root)
            wandb = loggers[1]
            assert wandb["class_path"].endswith("WandbLogger") and wandb["dict_kwargs"]["group"] == "tiny"
            assert masking in wandb["dict_kwargs"]["tags"]
        assert test_args[test_args.index("--ckpt_path") + 1] == str(root / "checkpoints" / "best.ckpt")
    assert not (tmp_path / "study" / "runs").exists()  # nothing was run
    # --dry-run is the same, --run-index selects
    assert study_mod.main(["--config", str(config), "--dry-run", "--run-index", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines[1:]


@pytest.mark.parametrize(("name", "runs"), [("study_demo.yaml", 12), ("study_coco_hsnet.yaml", 8)])
def test_shipped_study_configs_give_valid_fit_commands(
    name: str, runs: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["fss"])
    study = Study.from_file(REPO / "configs" / name)
    assert len(study.runs()) == runs
    first, last = study.runs()[0], study.runs()[-1]
    for run in (first, last):
        with pytest.raises(SystemExit) as exit_info:
            fss_main([*study.args(run, "fit"), "--print_config"])
        assert exit_info.value.code == 0, capsys.readouterr().err
        printed = yaml.safe_load(capsys.readouterr().out)
        for option, value in run.options.items():
            assert _printed_value(printed, option) == value, option
    if name == "study_demo.yaml":
        assert {r.options["model.backbone.weights"] for r in study.runs()} == {
            None,
            "runs/pretrain_synthetic/resnet18_fold0.pth",
        }
        assert study.pretrain is not None
        from fss.pretrain import output_path

        assert str(output_path(study.pretrain)) == "runs/pretrain_synthetic/resnet18_fold0.pth"


def test_config_errors_name_the_file_and_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: demo.yaml\nsweeps: {model.masking: [fm]}\n")
    assert study_mod.main(["--config", str(bad), "--emit-commands"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "sweeps" in err
    bad.write_text("name: x\nbase: nowhere.yaml\n")
    assert study_mod.main(["--config", str(bad), "--emit-commands"]) == 2
    assert "nowhere.yaml" in capsys.readouterr().err


def test_summary_statistics_and_epoch_95(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "epoch,step,train/loss,val/miou\n0,3,0.9,\n0,3,,10.0\n1,7,,40.0\n1,7,,41.0\n2,11,,39.5\n3,15,,42.0\n"
    )
    curve = read_curve(metrics)
    assert curve == {0: 10.0, 1: 41.0, 2: 39.5, 3: 42.0}  # the last value of an epoch wins
    assert epoch_reaching(curve) == 1  # 41 >= 0.95 * 42
    assert epoch_reaching(curve, 1.0) == 3 and epoch_reaching({}) is None
    records = [
        {"variant": "hm", "fold": 0, "seed": s, "status": "done", "best_epoch": e, "epoch_95": e,
         "best_val_miou": m, "test_miou": m, "test_fbiou": m, "wall_time_s": 1.0}
        for s, e, m in [(0, 3, 40.0), (1, 5, 44.0)]
    ]  # fmt: skip
    (row, mean_row) = summarize(records, [0])
    assert row["fold"] == "0" and mean_row["fold"] == "mean" and row["runs"] == 2
    assert row["best_epoch_mean"] == 4.0 and row["best_epoch_std"] == pytest.approx(2**0.5)
    assert row["test_miou_mean"] == 42.0


def test_pretrain_runs_first_once_when_its_output_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "bb.pth"
    pretrain_config = tmp_path / "pretrain.yaml"
    pretrain_config.write_text(f"output: {output}\nsteps: 1\n")
    config = write_tiny_study(tmp_path)
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "pretrain": "pretrain.yaml"}))  # relative to the study file
    assert study_mod.main(["--config", str(config), "--emit-commands"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"# first, once: fss pretrain --config {pretrain_config}"
    calls: list[list[str]] = []
    monkeypatch.setattr(runner, "_execute", lambda args, launcher, log: calls.append(list(args)))
    study = Study.from_file(config)
    assert study_mod.run_study(study, "inprocess", indices=[]) == {}
    assert calls == [["pretrain", "--config", str(pretrain_config)]]
    output.write_bytes(b"")  # the backbone exists now: no second pretraining
    study_mod.run_study(study, "inprocess", indices=[])
    assert len(calls) == 1


def test_embedded_base_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config = tmp_path / "embedded.yaml"
    config.write_text(
        yaml.safe_dump({"name": "emb", "base": base, "output_dir": str(tmp_path / "out"), "wandb": False})
    )
    study = Study.from_file(config)
    assert study.base_config == tmp_path / "out" / "base_config.yaml"
    assert yaml.safe_load(study.base_config.read_text()) == base
    assert [name for name, _ in study.variants] == ["fm", "im", "hm"]  # the default sweep
    fit_args = study.args(study.runs()[0], "fit")
    loggers = json.loads(fit_args[fit_args.index("--trainer.logger") + 1])
    assert [logger["class_path"].rsplit(".", 1)[-1] for logger in loggers] == ["CSVLogger"]  # wandb: false
    monkeypatch.setattr(sys, "argv", ["fss"])
    with pytest.raises(SystemExit) as exit_info:
        fss_main([*fit_args, "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert "masking: fm" in capsys.readouterr().out


def test_write_slurm_gives_an_array_script_and_the_command_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_tiny_study(tmp_path)
    raw = yaml.safe_load(config.read_text())
    slurm = {"partition": "gpu", "time": "0-02:00:00", "max_parallel": 1, "extra": {"constraint": "a100"}}
    config.write_text(yaml.safe_dump({**raw, "slurm": slurm}))
    assert study_mod.main(["--config", str(config), "--emit-commands"]) == 0
    expected = capsys.readouterr().out.strip().splitlines()
    assert study_mod.main(["--config", str(config), "--write-slurm"]) == 0
    out = tmp_path / "study"
    assert (out / "commands.txt").read_text().strip().splitlines() == expected
    script = (out / "study.sbatch").read_text()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --array=0-1%1" in directives  # two runs, one at a time
    assert {"#SBATCH --partition=gpu", "#SBATCH --time=0-02:00:00", "#SBATCH --constraint=a100"} <= set(
        directives
    )
    assert "#SBATCH --gres=gpu:1" in directives and "#SBATCH --job-name=tiny" in directives
    task = [line for line in script.splitlines() if "--run-index" in line]
    assert task == [f'fss study --config {config} --output-dir {out} --run-index "$SLURM_ARRAY_TASK_ID"']
    assert "source .venv/bin/activate" in script.splitlines()
    assert subprocess.run(["bash", "-n", str(out / "study.sbatch")]).returncode == 0  # valid shell
    assert not (out / "runs").exists()  # nothing was run


def test_slurm_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny_study(tmp_path)
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "slurm": {"gpus": 2}}))
    assert study_mod.main(["--config", str(config), "--write-slurm"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "'gpus'" in err and "gpus_per_node" in err
    config.write_text(yaml.safe_dump({**raw, "slurm": {"gpus_per_node": "two"}}))
    assert study_mod.main(["--config", str(config), "--write-slurm"]) == 2
    assert "slurm.gpus_per_node" in capsys.readouterr().err


def test_submit_uses_submitit_with_the_slurm_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_tiny_study(tmp_path)
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "slurm": {"time": 90, "partition": "gpu", "cpus_per_task": 4}}))
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed: a clear message, exit 2
    assert study_mod.main(["--config", str(config), "--submit"]) == 2
    assert 'pip install "fss[cluster]"' in capsys.readouterr().err

    submitted: dict[str, object] = {}

    class Job:
        def __init__(self, result: str) -> None:
            self.job_id, self._result = "42", result

        def result(self) -> str:
            return self._result

    class Executor:  # a stand-in for submitit.AutoExecutor that records what it is given
        def __init__(self, folder: str) -> None:
            submitted["folder"] = folder

        def update_parameters(self, **params: object) -> None:
            submitted["params"] = params

        def map_array(self, fn, configs, output_dirs, indices):  # noqa: ANN001
            submitted["call"] = (fn, list(configs), list(output_dirs), list(indices))
            return [Job("skipped") for _ in indices]

    monkeypatch.setitem(sys.modules, "submitit", SimpleNamespace(AutoExecutor=Executor))
    monkeypatch.setattr(
        study_mod.command, "report", lambda study: {"study.md": "s", "runs.csv": "r", "curves.png": "c"}
    )
    assert study_mod.main(["--config", str(config), "--submit"]) == 0
    params = submitted["params"]
    assert params["timeout_min"] == 90 and params["slurm_partition"] == "gpu" and params["cpus_per_task"] == 4
    fn, configs, output_dirs, indices = submitted["call"]
    assert fn is runner.run_one_by_index and indices == [0, 1]
    assert configs == [str(config)] * 2 and output_dirs == [str(tmp_path / "study")] * 2


def test_slurm_time_in_minutes() -> None:
    from fss.study.config import SlurmOptions

    assert SlurmOptions(time="1-02:30:00").minutes() == 1590
    assert SlurmOptions(time="45:00").minutes() == 45
    assert SlurmOptions(time="00:00:01").minutes() == 1
    assert SlurmOptions(time=90).minutes() == 90


def _printed_value(printed: dict, option: str):
    """The value of dotted ``option`` in a printed config; ``init_args`` may be left out, as on the command line."""
    node = printed
    for key in option.split("."):
        if key not in node and "init_args" in node:
            node = node["init_args"]
        node = node[key]
    return node
