"""BAM's two-stage training through the CLI on synthetic data: stage 1 fits the base learner (PSPNet on
the fold's training classes, backbone fine-tuned), stage 2 fits BAM with that base learner frozen; on
both of the reference's backbones (the dilated ResNet-50 and VGG-16-BN, at width 4)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fss.cli import build_cli
from fss.models import BAM, PSPNet
from tests.test_models_cli import DEMO, TINY

#: a dilated ResNet-50 of width 4, random weights
BACKBONE = ["--model.backbone", "fss.backbones.DilatedResNet", "--model.backbone.name", "resnet50", "--model.backbone.weights", "null",
            "--model.backbone.width", "4"]  # fmt: skip
#: VGG-16-BN of width 4, random weights
VGG = ["--model.backbone", "fss.backbones.VGG16BN", "--model.backbone.weights", "null", "--model.backbone.width", "4"]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fss"])


@pytest.mark.parametrize("backbone", [BACKBONE, VGG], ids=["dilated_resnet50", "vgg16_bn"])
def test_base_learner_then_bam(tmp_path: Path, backbone: list[str]) -> None:
    stage1 = build_cli(
        [
            "fit",
            "--config",
            DEMO,
            *TINY,
            "--trainer.fast_dev_run",
            "false",
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path / "base"),
            "--model.net",
            "fss.models.PSPNet",
            "--model.net.num_base_classes",
            "36",
            "--model.net.hidden",
            "32",
            *backbone,
            "--model.backbone.trainable",
            "true",
            "--data.init_args.class_maps",
            "true",
            "--model.optimizer",
            "sgd",
            "--model.lr",
            "0.01",
            "--model.decoder_lr",
            "0.1",
            "--model.scheduler",
            "poly",
            "--model.fg_weight",
            "1.0",
        ]  # fmt: skip
    )
    psp = stage1.model.net
    assert isinstance(psp, PSPNet) and stage1.trainer.global_step == 1
    assert psp.base_class_ids.tolist() == list(range(12, 48))  # synthetic fold 0's training classes
    groups = stage1.trainer.optimizers[0].param_groups
    assert type(stage1.trainer.optimizers[0]) is torch.optim.SGD
    assert {len(g["params"]) for g in groups} == {
        sum(1 for n, _ in psp.named_parameters() if n.startswith("backbone.")),
        sum(1 for n, _ in psp.named_parameters() if n.startswith("decoder.")),
    }
    assert groups[1]["lr"] < 0.1  # the poly schedule has stepped
    ckpt = next((tmp_path / "base").rglob("last.ckpt"))

    stage2 = build_cli(
        [
            "fit",
            "--config",
            DEMO,
            *TINY,
            "--trainer.default_root_dir",
            str(tmp_path / "meta"),
            "--model.net",
            "BAM",
            "--model.net.base_learner",
            str(ckpt),
            "--model.net.reduce_dim",
            "16",
            *backbone,
            "--data.init_args.class_maps",
            "true",
            "--model.masking",
            "hm",
            "--model.optimizer",
            "sgd",
            "--model.lr",
            "0.005",
            "--model.scheduler",
            "poly",
        ]  # fmt: skip
    )
    bam = stage2.model.net
    assert isinstance(bam, BAM) and stage2.trainer.state.finished and stage2.trainer.global_step == 1
    assert bam.base_class_ids.tolist() == list(range(12, 48))
    trained = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in bam.base_learner.state_dict().items():  # frozen: stage 1's weights, unchanged
        assert torch.equal(value, trained[f"net.decoder.{key}"]), key
    for key, value in bam.backbone.state_dict().items():
        assert torch.equal(value, trained[f"net.backbone.{key}"]), key
    metrics = stage2.trainer.callback_metrics
    assert {"train/loss", "train/loss_main", "train/loss_aux_meta", "train/loss_base", "val/miou"} <= set(
        metrics
    )
    assert metrics["train/loss_base"] > 0  # CE over the 37 base-learner channels
    torch.testing.assert_close(
        metrics["train/loss"],
        metrics["train/loss_main"] + metrics["train/loss_aux_meta"] + metrics["train/loss_base"],
    )
    # `fss test` with stage 2's options: BAM read its 36 base classes from the base learner (not the
    # default num_base_classes 15); `--model.net BAM` states the class only, the checkpoint fills the rest
    stage2.trainer.save_checkpoint(tmp_path / "bam.ckpt")
    tested = build_cli(
        ["test", "--config", DEMO, *TINY, "--trainer.fast_dev_run", "false",
         "--trainer.default_root_dir", str(tmp_path / "test"), "--model.net", "BAM", "--model.net.reduce_dim", "16",
         *backbone, "--model.masking", "hm", "--ckpt_path", str(tmp_path / "bam.ckpt")]
    )  # fmt: skip
    assert len(tested.model.net.base_class_ids) == 36
    assert "test/miou" in tested.trainer.callback_metrics


def test_bam_refuses_a_base_learner_of_another_fold(tmp_path: Path) -> None:
    net = PSPNet(backbone=BAM_BACKBONE(), num_base_classes=36, hidden=32)
    net.set_train_classes(list(range(0, 36)))  # fold 3's training classes
    ckpt = tmp_path / "base.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    bam = BAM(backbone=BAM_BACKBONE(), base_learner=str(ckpt), reduce_dim=16)
    assert bam.base_class_ids.tolist() == list(range(36))
    with pytest.raises(ValueError, match=r"base learner was trained on the classes.*data\.fold"):
        bam.set_train_classes(list(range(12, 48)))
    with pytest.raises(FileNotFoundError, match="base_learner.*stage 1"):
        BAM(backbone=BAM_BACKBONE(), base_learner=str(tmp_path / "missing.ckpt"))


def BAM_BACKBONE():
    from fss.backbones import DilatedResNet

    return DilatedResNet(weights=None, width=4)


def test_a_bam_checkpoint_rebuilds_without_the_base_learner_file(tmp_path: Path) -> None:
    """``base_learner`` only initialises: the task's description leaves it out, the checkpoint holds its weights."""
    from fss.components import describe_options, part_form

    net = PSPNet(backbone=BAM_BACKBONE(), num_base_classes=36, hidden=32)
    net.set_train_classes(list(range(12, 48)))
    ckpt = tmp_path / "base.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    bam = BAM(backbone=BAM_BACKBONE(), base_learner=str(ckpt), reduce_dim=16)
    described = describe_options(bam)["net"]
    assert "base_learner" not in described["init_args"] and described["init_args"]["num_base_classes"] == 36
    config = {
        "class_path": "fss.models.BAM",
        "init_args": {"base_learner": "elsewhere.ckpt", "reduce_dim": 16, "num_base_classes": 36},
    }
    assert part_form("net", config) == part_form("net", described)
