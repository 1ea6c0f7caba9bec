"""``fss study`` with a first stage (``stage1:``): BAM's base learner fitted once per fold, then every
variant's meta learner with that base learner, on synthetic data, in-process."""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from fss import study as study_mod
from fss.cli import main as fss_main
from fss.study import Study, runner
from fss.study.config import StudyConfigError
from tests.test_study import REPO, _printed_value

#: a dilated ResNet-50 of width 4 with random weights, in both stages
BACKBONE = {
    "model.backbone": "fss.backbones.DilatedResNet",
    "model.backbone.name": "resnet50",
    "model.backbone.weights": None,
    "model.backbone.width": 4,
}
#: configs/demo.yaml shrunk to one cheap epoch
TINY = {
    "data.init_args.img_size": 64,
    "data.init_args.batch_size": 2,
    "data.init_args.train_episodes": 2,
    "data.init_args.val_episodes": 2,
    "data.init_args.test_episodes": 2,
    "trainer.max_epochs": 1,
    "trainer.accelerator": "cpu",
    "trainer.num_sanity_val_steps": 0,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}
#: stage 1: the PSPNet base learner on synthetic fold 0's 36 training classes, backbone fine-tuned
STAGE1 = {
    **TINY,
    "model.net": "fss.models.PSPNet",
    "model.net.num_base_classes": 36,
    "model.net.hidden": 32,
    **BACKBONE,
    "model.backbone.trainable": True,
    "data.init_args.class_maps": True,
    "model.optimizer": "sgd",
    "model.lr": 0.01,
    "model.decoder_lr": 0.1,
    "model.scheduler": "poly",
    "model.fg_weight": 1.0,
}
#: stage 2 (the study's runs): BAM on the base learner, fm and hm swept (the number of base classes
#: comes from the base learner; each run's `fss test --ckpt_path` takes it from the checkpoint)
STAGE2 = {
    **TINY,
    "model.net": "BAM",
    "model.net.reduce_dim": 16,
    **BACKBONE,
    "model.optimizer": "sgd",
}


def write_study(directory: Path, stage1: dict | None = None) -> Path:
    demo = str(REPO / "configs" / "demo.yaml")
    config = {
        "name": "bam_tiny",
        "base": demo,
        "output_dir": str(directory / "study"),
        "sweep": {"model.masking": ["fm", "hm"]},
        "folds": [0],
        "seeds": [0],
        "overrides": STAGE2,
        "wandb": False,
        "stage1": stage1 if stage1 is not None else {"config": demo, "overrides": STAGE1},
    }
    path = directory / "bam_study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_first_stage_runs_once_per_fold_and_feeds_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["fss"])
    study = Study.from_file(write_study(tmp_path))
    calls: list[list[str]] = []
    real_execute = runner._execute

    def spy(args: list[str], launcher: str, log: Path) -> None:
        calls.append(list(args))
        real_execute(args, launcher, log)

    monkeypatch.setattr(runner, "_execute", spy)
    fm, hm = study.runs()
    assert study_mod.run_study(study, "inprocess") == {fm.name: "ran", hm.name: "ran"}
    stage = study.stage1_run(0)
    base_learner = stage.root / "checkpoints" / "last.ckpt"
    # one stage-1 fit, then fit + test of each variant, which all got the stage's checkpoint
    assert [(c[0], c[c.index("--trainer.default_root_dir") + 1]) for c in calls] == [
        ("fit", str(stage.root)),
        ("fit", str(fm.root)),
        ("test", str(fm.root)),
        ("fit", str(hm.root)),
        ("test", str(hm.root)),
    ]
    for args in calls[1:]:
        assert args[args.index("--model.net.base_learner") + 1] == str(base_learner)
    done = json.loads((stage.root / "done.json").read_text())
    assert done["checkpoint"] == str(base_learner) and study.stage1_done(0)
    # the runs' BAM holds stage 1's trained PSPNet, frozen
    trained = torch.load(base_learner, map_location="cpu", weights_only=False)["state_dict"]
    for run in (fm, hm):
        state = torch.load(run.best_ckpt, map_location="cpu", weights_only=False)["state_dict"]
        learner = {
            k[len("net.base_learner.") :]: v for k, v in state.items() if k.startswith("net.base_learner.")
        }
        assert learner and all(torch.equal(v, trained[f"net.decoder.{k}"]) for k, v in learner.items())
        assert run.test_done
    # everything done: nothing runs again
    calls.clear()
    assert study_mod.run_study(study, "inprocess") == {fm.name: "skipped", hm.name: "skipped"}
    assert calls == []
    # an interrupted first stage (its last.ckpt, no done.json) is resumed before a run that needs it
    (stage.root / "done.json").unlink()
    (hm.root / "fit" / "best.json").unlink()
    monkeypatch.setattr(runner, "_execute", lambda args, launcher, log: calls.append(list(args)))
    with pytest.raises(RuntimeError, match="best.json"):  # the stand-in _execute trains nothing
        runner.run_one(study, hm, "inprocess")
    assert calls[0][calls[0].index("--ckpt_path") + 1] == str(base_learner)
    assert calls[0][calls[0].index("--trainer.default_root_dir") + 1] == str(stage.root)


def test_emit_commands_and_slurm_files_show_the_first_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_study(tmp_path)
    assert study_mod.main(["--config", str(config), "--emit-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    prefix = "# first stage of fold 0, before its runs: "
    assert len(lines) == 3 and lines[0].startswith(prefix)
    stage1 = shlex.split(lines[0][len(prefix) :])
    root = tmp_path / "study" / "stage1" / "fold0"
    assert stage1[:2] == ["fss", "fit"] and stage1[stage1.index("--model.net") + 1] == "fss.models.PSPNet"
    assert stage1[stage1.index("--trainer.default_root_dir") + 1] == str(root)
    assert stage1[stage1.index("--seed_everything") + 1] == "0" and "--ckpt_path" not in stage1
    for line in lines[1:]:
        fit = shlex.split(line.split(" && ")[0])
        assert fit[fit.index("--model.net.base_learner") + 1] == str(root / "checkpoints" / "last.ckpt")
    assert study_mod.main(["--config", str(config), "--write-slurm"]) == 0
    capsys.readouterr()
    out = tmp_path / "study"
    assert (out / "stage1_commands.txt").read_text().splitlines() == [lines[0][len(prefix) :]]
    assert "first stage" in (out / "study.sbatch").read_text()
    # the stage-1 command parses as a fit config (nothing is run)
    monkeypatch.setattr(sys, "argv", ["fss"])
    with pytest.raises(SystemExit) as exit_info:
        fss_main([*stage1[1:], "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert _printed_value(yaml.safe_load(capsys.readouterr().out), "model.net.num_base_classes") == 36


@pytest.mark.parametrize(
    ("stage1", "message"),
    [
        ({"overrides": {}}, "missing `config:`"),
        ({"config": "demo.yaml", "chekpoint": "last"}, "'chekpoint'"),
        ({"config": "demo.yaml", "checkpoint": "first"}, "stage1.checkpoint must be `last` or `best`"),
        ({"config": "nowhere.yaml"}, "stage1.config: nowhere.yaml` not found"),
        ({"config": "demo.yaml", "seed": [0, 1]}, "stage1.seed is one integer"),
    ],
)
def test_stage1_errors_name_the_option(tmp_path: Path, stage1: dict, message: str) -> None:
    if stage1.get("config") == "demo.yaml":
        stage1 = {**stage1, "config": str(REPO / "configs" / "demo.yaml")}
    with pytest.raises(StudyConfigError, match="stage1") as info:
        Study.from_file(write_study(tmp_path, stage1))
    assert message in str(info.value) and str(tmp_path / "bam_study.yaml") in str(info.value)


def test_the_stage_lock_makes_the_second_runner_wait(tmp_path: Path) -> None:
    lock = tmp_path / "stage1" / ".lock"
    order: list[str] = []

    def second() -> None:
        with runner._locked(lock):
            order.append("second")

    with runner._locked(lock):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
    thread.join(10)
    assert order == ["first done", "second"]


def test_the_shipped_bam_study_chains_both_stages(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["fss"])
    study = Study.from_file(REPO / "configs" / "study_pascal_bam.yaml")
    assert study.stage1 is not None and study.stage1.config.name == "pascal_bam_base.yaml"
    assert {r.fold for r in study.runs()} == {0, 1, 2, 3}
    for fold in (0, 3):
        with pytest.raises(SystemExit) as exit_info:
            fss_main([*study.stage1_args(fold), "--print_config"])
        assert exit_info.value.code == 0, capsys.readouterr().err
        printed = yaml.safe_load(capsys.readouterr().out)
        assert _printed_value(printed, "data.init_args.fold") == fold
        assert _printed_value(printed, "model.net.class_path") == "fss.models.PSPNet"
    run = study.runs()[-1]
    with pytest.raises(SystemExit) as exit_info:
        fss_main([*study.args(run, "fit"), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    assert _printed_value(printed, "model.net.init_args.base_learner") == str(
        study.stage1_checkpoint(run.fold)
    )
    assert _printed_value(printed, "data.init_args.fold") == run.fold
