"""Training options of every model through the task and the real CLI: optimizers, schedule, net_options, configs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from fss.cli import build_cli, main
from fss.data import SyntheticDataModule
from fss.models import MODELS, FewShotSegmenter
from fss.task import FewShotSegmentationTask

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
MODEL_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*_vat_*.yaml")) + sorted(
    p.name for p in (REPO / "configs").glob("*_asnet_*.yaml")
)

#: the demo config shrunk: 64 px, 2 episodes per batch, one training and one validation batch
TINY = [
    "--data.init_args.img_size", "64",
    "--data.init_args.batch_size", "2",
    "--data.init_args.train_episodes", "2",
    "--data.init_args.val_episodes", "2",
    "--data.init_args.test_episodes", "2",
    "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.fast_dev_run", "1",
]  # fmt: skip

#: per model: options that keep a CPU step cheap, and the optimizer they are trained with
NET_ARGS = {
    "hsnet": [],
    "asnet": [],  # 64 px supports work: the learner pools its support dims to 2 x 2
    "vat": ["--model.net_options", '{"feature_size": 8, "benchmark": "pascal"}', "--model.optimizer", "adamw",
            "--model.lr", "5e-4", "--model.decoder_lr", "1e-4"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when it gets ``args`` while sys.argv holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["fss"])


def small_vat(**kwargs) -> FewShotSegmentationTask:
    options = {
        "net": "vat",
        "backbone": "resnet18",
        "weights": None,
        "masking": "hm",
        "num_classes": 5,
        "net_options": {"feature_size": 8, "benchmark": "pascal"},
    }
    return FewShotSegmentationTask(**(options | kwargs))


# -- optimizer and parameter groups ------------------------------------------------------------
def test_vat_decoder_lr_makes_two_adamw_groups_of_trainable_learner_params() -> None:
    task = small_vat(optimizer="adamw", lr=5e-4, decoder_lr=1e-4, weight_decay=0.05)
    optimizer = task.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    learner, decoder = optimizer.param_groups
    assert (learner["lr"], decoder["lr"]) == (pytest.approx(5e-4), pytest.approx(1e-4))
    assert learner["weight_decay"] == decoder["weight_decay"] == pytest.approx(0.05)

    named = dict(task.net.learner.named_parameters())
    frozen = {id(p) for p in named.values() if not p.requires_grad}
    assert frozen, "VAT freezes its unused parameters: the requires_grad filter would be untested"
    expected_decoder = {id(p) for n, p in named.items() if "decoder" in n and p.requires_grad}
    expected_rest = {id(p) for n, p in named.items() if "decoder" not in n and p.requires_grad}
    assert expected_decoder and expected_rest
    assert {id(p) for p in decoder["params"]} == expected_decoder
    assert {id(p) for p in learner["params"]} == expected_rest
    in_optimizer = expected_decoder | expected_rest
    assert not in_optimizer & frozen
    assert not in_optimizer & {id(p) for p in task.net.backbone.parameters()}


def test_one_group_without_decoder_lr_and_adam_by_default() -> None:
    task = small_vat()
    optimizer = task.configure_optimizers()
    assert type(optimizer) is torch.optim.Adam
    (group,) = optimizer.param_groups
    assert group["lr"] == pytest.approx(1e-3) and group["weight_decay"] == 0.0
    trainable = {id(p) for p in task.net.learner.parameters() if p.requires_grad}
    assert {id(p) for p in group["params"]} == trainable


class PrototypeSegmenter(FewShotSegmenter):
    """A 1x1 conv on the cosine similarity to the masked-support prototype (a fast stand-in)."""

    first_layer = 4

    def __init__(self, backbone: str = "resnet18", masking: str = "fm", weights: str | None = None) -> None:
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        self.learner = nn.Conv2d(1, 2, kernel_size=1)

    def predict_logits(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_mask: Tensor
    ) -> Tensor:
        prototype = support_feats[-1].mean(dim=(2, 3), keepdim=True)
        return self.learner(F.cosine_similarity(query_feats[-1], prototype, dim=1).unsqueeze(1))


class RecordLR(pl.Callback):
    """The learning rate of each parameter group at the start of every training epoch."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_cosine_schedule_steps_once_per_epoch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(MODELS, "prototype", PrototypeSegmenter)
    task = FewShotSegmentationTask(
        net="prototype", backbone="resnet18", weights=None, masking="fm", num_classes=48,
        lr=1e-2, scheduler="cosine", min_lr=1e-4,
    )  # fmt: skip
    data = SyntheticDataModule(img_size=32, batch_size=2, train_episodes=4, val_episodes=2, test_episodes=2)
    record = RecordLR()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[record], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, data)
    # CosineAnnealingLR(T_max=4, eta_min=1e-4) from 1e-2: lr_e = 1e-4 + (1e-2 - 1e-4) (1 + cos(pi e / 4)) / 2
    expected = [
        1e-2,
        1e-4 + 9.9e-3 * (1 + math.sqrt(0.5)) / 2,
        1e-4 + 9.9e-3 / 2,
        1e-4 + 9.9e-3 * (1 - math.sqrt(0.5)) / 2,
    ]
    assert [lrs[0] for lrs in record.lrs] == pytest.approx(expected, rel=1e-9)
    assert trainer.global_step == 8  # 2 steps per epoch, the schedule did not step per batch
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4)  # stepped after the last epoch


def test_cosine_needs_max_epochs(tmp_path: Path) -> None:
    task = small_vat(scheduler="cosine")
    task.trainer = pl.Trainer(accelerator="cpu", max_epochs=-1, logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        task.configure_optimizers()


def test_decoder_lr_without_decoder_params_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, "prototype", PrototypeSegmenter)
    task = FewShotSegmentationTask(net="prototype", backbone="resnet18", weights=None, decoder_lr=1e-4)
    with pytest.raises(ValueError, match="model.decoder_lr"):
        task.configure_optimizers()


# -- net_options ----------------------------------------------------------------------------
def test_unknown_net_option_names_the_option_and_the_valid_keys() -> None:
    with pytest.raises(ValueError, match="model.net_options") as err:
        small_vat(net_options={"feature_sise": 8})
    message = str(err.value)
    assert "'feature_sise'" in message and "VAT" in message
    assert "feature_size" in message and "gradient_checkpointing" in message and "benchmark" in message
    with pytest.raises(ValueError, match="model.masking"):
        small_vat(net_options={"masking": "fm"})


def test_net_options_reach_the_model() -> None:
    task = small_vat(net_options={"feature_size": 8, "benchmark": "fss1000", "gradient_checkpointing": True})
    assert task.net.feature_size == 8 and task.net.benchmark == "fss1000" and task.net.gradient_checkpointing


def test_unknown_net_option_through_the_cli(tmp_path: Path) -> None:
    args = ["fit", "--config", DEMO, "--model.net", "asnet", "--model.net_options", '{"pool_threshold": 10}',
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError, match=r"model.net_options: 'pool_threshold' .* valid keys: pool_thr"):
        main(args)


# -- the shipped VAT / ASNet configs ---------------------------------------------------------
REFERENCE = {  # (optimizer, lr, decoder_lr, batch size, image size) per model and dataset
    ("vat", "pascal"): ("adamw", 5e-4, 5e-4, 16, 473),
    ("vat", "coco"): ("adamw", 5e-4, 5e-4, 16, 417),
    ("vat", "fss1000"): ("adamw", 5e-4, 5e-4, 16, 473),
    ("asnet", "pascal"): ("adam", 1e-3, None, 12, 400),
    ("asnet", "coco"): ("adam", 1e-3, None, 24, 400),
    ("asnet", "fss1000"): ("adam", 1e-3, None, 12, 400),
}


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_model_config_parses_with_reference_settings(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, net, masking = config.removesuffix(".yaml").split("_")
    monkeypatch.chdir(tmp_path)  # relative paths of the config (data roots, runs/) resolve here
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / config), "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    assert not list(tmp_path.iterdir()), "--print_config wrote to disk"
    printed = yaml.safe_load(captured.out)
    model, data = printed["model"], printed["data"]["init_args"]
    assert (model["net"], model["masking"]) == (net, masking)
    if dataset == "pascal20":  # the cross-domain source (all 20 classes) keeps PASCAL's reference settings
        assert data["class_split"] == "all"
    optimizer, lr, decoder_lr, batch_size, img_size = REFERENCE[net, dataset.removesuffix("20")]
    assert (model["optimizer"], model["lr"], model["decoder_lr"]) == (optimizer, lr, decoder_lr)
    assert (model["weight_decay"], model["scheduler"]) == (0.0, "none")
    assert (data["batch_size"], data["img_size"]) == (batch_size, img_size)
    if net == "vat":
        assert model["net_options"] == {"benchmark": dataset.removesuffix("20")}
        assert printed["trainer"]["max_epochs"] == (400 if dataset == "coco" else 300)
    assert printed["trainer"]["default_root_dir"].startswith(f"runs/{dataset}_{net}_{masking}")


def test_print_config_shows_the_new_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                DEMO,
                "--model.scheduler",
                "cosine",
                "--model.decoder_lr",
                "1e-4",
                "--print_config",
            ]
        )
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["scheduler"] == "cosine" and model["decoder_lr"] == 1e-4 and model["optimizer"] == "adam"


# -- fss fit --trainer.fast_dev_run 1 of every model and both masking families ---------------
@pytest.mark.slow
@pytest.mark.parametrize("masking", ["fm", "hm"])
@pytest.mark.parametrize("net", ["hsnet", "asnet", "vat"])
def test_fast_dev_run_of_every_model(net: str, masking: str, tmp_path: Path) -> None:
    args = ["fit", "--config", DEMO, *TINY, "--model.net", net, "--model.masking", masking, *NET_ARGS[net],
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cli = build_cli(args)  # what `fss fit ...` (fss.cli.main) runs
    assert type(cli.model.net) is MODELS[net]
    assert cli.model.net.masking.name == masking
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert {"train/loss", "val/loss", "val/miou"} <= set(cli.trainer.callback_metrics)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    groups = cli.trainer.optimizers[0].param_groups
    if net == "vat":
        assert type(cli.trainer.optimizers[0]) is torch.optim.AdamW
        assert [g["lr"] for g in groups] == [pytest.approx(5e-4), pytest.approx(1e-4)]
    else:
        assert type(cli.trainer.optimizers[0]) is torch.optim.Adam and len(groups) == 1


def test_one_net_option_on_the_command_line_keeps_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(REPO / "configs" / "coco_vat_hm.yaml")
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                config,
                "--model.net_options.gradient_checkpointing",
                "true",
                "--print_config",
            ]
        )
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["net_options"] == {"benchmark": "coco", "gradient_checkpointing": True}
