"""NTRENet through the CLI: a fast_dev_run on synthetic data with its own backbone (every loss term logged),
and its shipped configs with the reference's settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from fss.cli import build_cli, main
from fss.models import NTRENet
from tests.test_models_cli import DEMO, REPO, TINY

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*_ntrenet_*.yaml"))


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fss"])


def test_fast_dev_run_on_a_dilated_resnet_logs_every_term(tmp_path: Path) -> None:
    cli = build_cli(
        [
            "fit",
            "--config",
            DEMO,
            *TINY,
            "--data.init_args.img_size",
            "65",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--model.net",
            "NTRENet",
            "--model.net.reduce_dim",
            "16",
            "--model.net.ppm_scales",
            "[6, 3]",
            "--model.backbone",
            "fss.backbones.DilatedResNet",
            "--model.backbone.name",
            "resnet50",
            "--model.backbone.weights",
            "null",
            "--model.backbone.width",
            "4",
            "--model.masking",
            "hm",
            "--model.optimizer",
            "sgd",
            "--model.lr",
            "0.0025",
            "--model.momentum",
            "0.9",
            "--model.weight_decay",
            "1e-4",
            "--model.scheduler",
            "poly",
        ]  # fmt: skip
    )
    net = cli.model.net
    assert isinstance(net, NTRENet) and cli.trainer.state.finished and cli.trainer.global_step == 1
    assert type(cli.trainer.optimizers[0]) is torch.optim.SGD
    metrics = cli.trainer.callback_metrics
    terms = ("main", "aux_inner", "aux_initial", "background", "contrast")
    assert {"train/loss", "val/miou", *(f"train/loss_{t}" for t in terms)} <= set(metrics)
    aux = (
        metrics["train/loss_background"]
        + 0.4 * metrics["train/loss_aux_inner"]
        + 0.6 * metrics["train/loss_aux_initial"]
        + 0.01 * metrics["train/loss_contrast"]
    )
    torch.testing.assert_close(metrics["train/loss"], metrics["train/loss_main"] + aux)
    assert net.contrast.bank, "the training step filled the memory bank"


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_have_the_reference_settings(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, masking = config.removesuffix(".yaml").split("_")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / config), "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    printed = yaml.safe_load(captured.out)
    model, data = printed["model"], printed["data"]["init_args"]
    assert model["net"]["class_path"] == "fss.models.NTRENet" and model["masking"] == masking
    assert model["net"]["init_args"] == {
        "reduce_dim": 256, "ppm_scales": [60, 30, 15, 8], "bg_prototypes": 1, "aux_weight": 1.0,
    }  # fmt: skip
    assert model["backbone"] == {
        "class_path": "fss.backbones.DilatedResNet",
        "init_args": {
            "name": "resnet50",
            "weights": "initmodel/resnet50_v2.pth",
            "width": 64,
            "trainable": False,
        },
    }
    assert (model["optimizer"], model["lr"], model["momentum"], model["weight_decay"]) == (
        "sgd",
        2.5e-3,
        0.9,
        1e-4,
    )
    assert (model["scheduler"], model["poly_power"]) == ("poly", 0.9)
    assert (data["protocol"], data["batch_size"], data["use_original_imgsize"]) == ("pfenet", 4, True)
    assert data["img_size"] == {"pascal": 473, "coco": 641}[dataset]
    assert printed["trainer"]["max_epochs"] == {"pascal": 150, "coco": 50}[dataset]
    assert printed["early_stopping"]["patience"] > printed["trainer"]["max_epochs"]
