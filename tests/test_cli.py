"""The fss command line, run in-process on the shipped demo config with tiny overrides."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from fss import cli
from fss.cli import build_cli, main

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")

#: tiny data and trainer overrides: 64 px, 2 episodes per batch, 2 train / 1 val batches
TINY = [
    "--data.init_args.img_size", "64",
    "--data.init_args.batch_size", "2",
    "--data.init_args.train_episodes", "4",
    "--data.init_args.val_episodes", "2",
    "--data.init_args.test_episodes", "2",
    "--trainer.accelerator", "cpu",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.log_every_n_steps", "1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when it gets ``args`` while sys.argv holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["fss"])


def run_dir(root: Path) -> Path:
    """The single CSVLogger version directory under ``root``."""
    (version,) = sorted(root.glob("version_*"))
    return version


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the demo config (2 training batches), with its CSV and offline W&B loggers."""
    root = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        main(
            [
                "fit",
                "--config",
                DEMO,
                *TINY,
                "--trainer.max_epochs",
                "1",
                "--trainer.default_root_dir",
                str(root),
            ]
        )
    return root


@pytest.mark.slow
def test_fit_writes_checkpoints_config_logs_and_best_json(fitted: Path) -> None:
    run = run_dir(fitted)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best-epoch=0.ckpt").is_file()
    assert "SyntheticDataModule" in (run / "config.yaml").read_text()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/miou", "val/loss", "val/miou", "val/fbiou", "best_epoch"} <= set(header)
    assert list((fitted / "wandb").glob("offline-run-*")), "the demo's offline W&B logger wrote nothing"
    best = json.loads((run / "best.json").read_text())
    assert best["best_epoch"] == 0 and best["epochs_run"] == 1 and best["monitor"] == "val/miou"
    assert 0 <= best["best_val_miou"] <= 100 and best["wall_time_s"] > 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["num_classes"] == 48  # linked from data.num_classes
    assert ckpt["hyper_parameters"]["masking"] == "hm"


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_evaluate_from_checkpoint(subcommand: str, fitted: Path, tmp_path: Path) -> None:
    ckpt = run_dir(fitted) / "checkpoints" / "best-epoch=0.ckpt"
    main([subcommand, "--config", DEMO, *TINY, "--trainer.logger", "true",
          "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt)])  # fmt: skip
    if subcommand == "predict":
        return
    stage = {"test": "test", "validate": "val"}[subcommand]
    rows = (run_dir(tmp_path) / "metrics.csv").read_text().splitlines()
    assert {f"{stage}/loss", f"{stage}/miou", f"{stage}/fbiou"} <= set(rows[0].split(","))
    assert len(rows) == 2


@pytest.mark.slow
def test_checkpoint_evaluation_fetches_no_imagenet_weights(
    fitted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config asking for ImageNet weights still tests offline: the checkpoint holds the backbone."""

    def no_download(*args, **kwargs):
        raise AssertionError("ImageNet weights were fetched although the checkpoint has the backbone")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_download)
    # a checkpoint of a model trained from ImageNet weights (its hparams say so)
    ckpt = torch.load(
        run_dir(fitted) / "checkpoints" / "best-epoch=0.ckpt", map_location="cpu", weights_only=False
    )
    ckpt["hyper_parameters"]["backbone"]["init_args"]["weights"] = "imagenet"
    torch.save(ckpt, tmp_path / "imagenet_trained.ckpt")
    main(["test", "--config", DEMO, *TINY, "--model.backbone.weights", "imagenet", "--trainer.logger", "true",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(tmp_path / "imagenet_trained.ckpt")])  # fmt: skip
    assert "test/miou" in (run_dir(tmp_path / "run") / "metrics.csv").read_text()


@pytest.mark.slow
def test_checkpoint_of_the_old_model_options_is_upgraded(fitted: Path, tmp_path: Path) -> None:
    """A checkpoint written before typed models (net name, weights, net_options) still tests."""
    ckpt = torch.load(run_dir(fitted) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    hparams = ckpt["hyper_parameters"]
    hparams.update(net="hsnet", backbone="resnet18", weights=None, net_options={}, masking="hm")
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match="written by fss before typed models"):
        main(["test", "--config", DEMO, *TINY, "--trainer.logger", "true",
              "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(tmp_path / "old.ckpt")])  # fmt: skip
    assert "test/miou" in (run_dir(tmp_path / "run") / "metrics.csv").read_text()


def test_a_named_backbone_under_a_checkpoint_gets_no_weights() -> None:
    from fss.cli import _without_weights

    spec = _without_weights("resnet50")
    assert spec.class_path == "fss.backbones.ResNet" and spec.init_args.as_dict() == {
        "name": "resnet50",
        "weights": None,
    }


@pytest.mark.slow
def test_resume_from_last_checkpoint(fitted: Path, tmp_path: Path) -> None:
    last = run_dir(fitted) / "checkpoints" / "last.ckpt"
    main(["fit", "--config", DEMO, *TINY, "--trainer.logger", "true", "--trainer.max_epochs", "2",
          "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(last)])  # fmt: skip
    run = run_dir(tmp_path)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # last.ckpt is the end of training: 2 finished epochs ("epoch" counts them), 2 steps before + 2 after
    assert resumed["epoch"] == 2 and resumed["global_step"] == 4
    best = json.loads((run / "best.json").read_text())
    assert best["epochs_run"] == 2 and best["best_epoch"] in (0, 1)


@pytest.mark.slow
def test_fast_dev_run(tmp_path: Path) -> None:
    main(
        [
            "fit",
            "--config",
            DEMO,
            *TINY,
            "--trainer.fast_dev_run",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )


def test_link_and_overrides_reach_the_objects(tmp_path: Path) -> None:
    args = ["--config", DEMO, "--model.masking", "fm", "--data.init_args.shot", "2",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cli_ = build_cli(args, run=False)
    assert cli_.model.hparams.masking == "fm" and cli_.model.net.masking.name == "fm"
    assert cli_.model.hparams.num_classes == cli_.datamodule.num_classes == 48
    assert cli_.model.val_iou.num_classes == 48
    assert cli_.datamodule.shot == 2
    assert cli_.config.trainer.use_distributed_sampler is False
    assert [type(logger).__name__ for logger in cli_.trainer.loggers] == ["CSVLogger", "WandbLogger"]
    assert all(Path(logger.save_dir) == tmp_path for logger in cli_.trainer.loggers)
    callbacks = {type(c).__name__: c for c in cli_.trainer.callbacks}
    assert callbacks["RunCheckpoint"].monitor == "val/miou" and callbacks["RunCheckpoint"].mode == "max"
    assert callbacks["EarlyStopping"].monitor == "val/miou" and callbacks["EarlyStopping"].patience == 5
    assert "BestEpochTracker" in callbacks


#: configs of the Lightning subcommands; study_*/pretrain_*/crossdomain* configs belong to ``fss study``
#: / ``fss pretrain`` / ``fss crossdomain`` and are parsed by tests/test_study.py, tests/test_pretrain.py
#: and tests/test_crossdomain.py
LIGHTNING_CONFIGS = sorted(
    p.name
    for p in (REPO / "configs").glob("*.yaml")
    if not p.name.startswith(("study_", "pretrain_", "crossdomain"))
)


@pytest.mark.parametrize("config", LIGHTNING_CONFIGS)
def test_every_config_parses(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "configs" / config
    class_path = yaml.safe_load(path.read_text())["data"]["class_path"]
    subcommand = "predict" if config.startswith("predict") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert f"class_path: {class_path}" in capsys.readouterr().out


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, "--model.masking", "im", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: fss.data.SyntheticDataModule" in out and "masking: im" in out


@pytest.mark.parametrize("where", ["command line", "config file"])
def test_misspelled_key_is_a_clear_error(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if where == "command line":
        args = ["fit", "--config", DEMO, "--model.maskng", "fm"]
    else:
        bad = tmp_path / "bad.yaml"
        bad.write_text(Path(DEMO).read_text().replace("  masking: hm", "  maskng: hm"))
        args = ["fit", "--config", str(bad)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    assert "maskng" in capsys.readouterr().err


def test_subcommand_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model.masking" in out and "--early_stopping.patience" in out and "--ckpt_path" in out


def _hello(argv: list[str]) -> int:
    """A stand-in extra command."""
    print("hello", *argv)
    return 3


def test_extra_commands_are_dispatched_and_listed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "hello", (f"{__name__}:_hello", "print a greeting"))
    assert main(["hello", "world"]) == 3
    assert capsys.readouterr().out == "hello world\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "fit" in out and "hello" in out and "print a greeting" in out
