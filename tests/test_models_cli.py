"""Training options of every model through the task and the real CLI: optimizers, schedule, typed model parts, configs."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from fss.backbones import ResNet
from fss.cli import build_cli, main
from fss.data import SyntheticDataModule
from fss.models import MODELS, VAT, FewShotSegmenter
from fss.task import FewShotSegmentationTask

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
#: the FS-S configs of VAT and ASNet (the FS-CS ones, ``*_fscs_*``, are checked in tests/test_fscs_task.py)
MODEL_CONFIGS = [
    p.name
    for pattern in ("*_vat_*.yaml", "*_asnet_*.yaml")
    for p in sorted((REPO / "configs").glob(pattern))
    if "_fscs_" not in p.name
]
#: a random ResNet-18 in the config form
RESNET18 = {"class_path": "fss.backbones.ResNet", "init_args": {"name": "resnet18", "weights": None}}

#: the demo config shrunk: 64 px, 2 episodes per batch, on the CPU, quiet
TINY_RUN = [
    "--data.init_args.img_size", "64",
    "--data.init_args.batch_size", "2",
    "--data.init_args.train_episodes", "2",
    "--data.init_args.val_episodes", "2",
    "--data.init_args.test_episodes", "2",
    "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip
#: ... and one training and one validation batch
TINY = [*TINY_RUN, "--trainer.fast_dev_run", "1"]

#: per model: options that keep a CPU step cheap, and the optimizer they are trained with (default: the
#: registered name, Adam); ASNet runs on 64 px supports: its learner pools its support dims to 2 x 2
NET_ARGS = {
    "vat": ["--model.net", "VAT", "--model.net.feature_size", "8", "--model.net.benchmark", "pascal",
            "--model.optimizer", "adamw", "--model.lr", "5e-4", "--model.decoder_lr", "1e-4"],
    # BAM without a base-learner checkpoint: random base learner over the data's 36 training classes
    "bam": ["--model.net", "BAM", "--model.net.reduce_dim", "16", "--model.net.num_base_classes", "36"],
    "ntrenet": ["--model.net", "NTRENet", "--model.net.reduce_dim", "16", "--model.net.ppm_scales", "[4, 2]"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when it gets ``args`` while sys.argv holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["fss"])


def small_vat(**kwargs) -> FewShotSegmentationTask:
    options = {
        "net": functools.partial(VAT, feature_size=8, benchmark="pascal"),
        "backbone": ResNet("resnet18", weights=None),
        "masking": "hm",
        "num_classes": 5,
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

    num_levels = 1

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
        net="prototype", backbone=RESNET18, masking="fm", num_classes=48, lr=1e-2, scheduler="cosine", min_lr=1e-4,
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
    task = FewShotSegmentationTask(net="prototype", backbone=RESNET18, decoder_lr=1e-4)
    with pytest.raises(ValueError, match="model.decoder_lr"):
        task.configure_optimizers()


# -- the typed model parts on the command line --------------------------------------------------
def _printed_model(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return yaml.safe_load(captured.out)["model"]


def test_names_and_class_names_select_the_parts(capsys: pytest.CaptureFixture[str]) -> None:
    model = _printed_model(capsys, "--config", DEMO, "--model.net", "vat", "--model.backbone", "resnet101",
                           "--model.masking", "none")  # fmt: skip
    assert (model["net"], model["backbone"], model["masking"]) == ("vat", "resnet101", "none")
    model = _printed_model(capsys, "--config", DEMO, "--model.net", "VAT", "--model.net.feature_size", "8",
                           "--model.backbone.name", "resnet34")  # fmt: skip
    assert model["net"]["class_path"] == "fss.models.VAT" and model["net"]["init_args"]["feature_size"] == 8
    assert model["backbone"]["init_args"] == {"name": "resnet34", "weights": None}  # the demo's weights kept


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model.net", "ASNet", "--model.net.pool_threshold", "10"], "pool_threshold"),
        (["--model.backbone.wieghts", "null"], "wieghts"),
        (["--model.masking", "fn"], "fn"),
        (["--model.net", "vgg"], "vgg"),
    ],
)
def test_unknown_model_options_are_errors_that_name_them(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, *args, "--print_config"])
    assert exit_info.value.code != 0
    assert named in capsys.readouterr().err


def test_a_name_with_options_says_to_give_the_class(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO, "--model.backbone", "resnet50", "--model.backbone.weights", "null"])
    assert (
        "--model.backbone resnet50 is a registered name and takes no options (--model.backbone.weights): "
        "give the class instead, --model.backbone ResNet --model.backbone.name resnet50 "
        "--model.backbone.weights ..."
    ) in capsys.readouterr().err


def test_one_net_option_on_the_command_line_keeps_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(REPO / "configs" / "coco_vat_hm.yaml")
    model = _printed_model(capsys, "--config", config, "--model.net.gradient_checkpointing", "true")
    assert (
        model["net"]["init_args"]["benchmark"] == "coco"
        and model["net"]["init_args"]["gradient_checkpointing"]
    )


def test_old_model_options_give_one_message_with_the_new_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(
        "model:\n  net: vat\n  backbone: resnet18\n  weights: null\n  masking: hm\n"
        "  net_options: {feature_size: 8}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, "--config", str(old)])
    assert exit_info.value.code != 0
    message = capsys.readouterr().err
    assert f"{old}: model.net_options and model.weights are options of fss before typed models" in message
    snippet = yaml.safe_load(message[message.index("model:") :])["model"]
    assert snippet["net"] == {"class_path": "fss.models.VAT", "init_args": {"feature_size": 8}}
    assert snippet["backbone"] == RESNET18 and snippet["masking"] == "hm"
    # the snippet is a valid config
    printed = _printed_model(capsys, "--config", DEMO, "--model", yaml.safe_dump(snippet))
    assert printed["net"]["init_args"]["feature_size"] == 8 and printed["backbone"] == RESNET18
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO, "--model.net_options.feature_size", "8", "--model.weights", "null"])
    message = capsys.readouterr().err
    assert "use --model.net.feature_size" in message and "use --model.backbone.weights" in message


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
    assert model["net"]["class_path"] == f"fss.models.{MODELS[net].__name__}" and model["masking"] == masking
    assert model["backbone"] == {
        "class_path": "fss.backbones.ResNet",
        "init_args": {"name": "resnet50", "weights": "imagenet"},
    }
    if dataset == "pascal20":  # the cross-domain source (all 20 classes) keeps PASCAL's reference settings
        assert data["class_split"] == "all"
    optimizer, lr, decoder_lr, batch_size, img_size = REFERENCE[net, dataset.removesuffix("20")]
    assert (model["optimizer"], model["lr"], model["decoder_lr"]) == (optimizer, lr, decoder_lr)
    assert (model["weight_decay"], model["scheduler"]) == (0.0, "none")
    assert (data["batch_size"], data["img_size"]) == (batch_size, img_size)
    if net == "vat":
        assert model["net"]["init_args"]["benchmark"] == dataset.removesuffix("20")
        assert printed["trainer"]["max_epochs"] == (400 if dataset == "coco" else 300)
    if net == "asnet":  # the reference ASNet (attention-only masking) and ASNet-HM
        assert masking in ("none", "hm")
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


# -- fss fit --trainer.fast_dev_run 1 of every model on both backbone families ---------------
#: a random ResNet-18 (FM) and a random 4-block DINOv2-architecture ViT with 14 px patches (HM: both
#: backbone passes); every other masking x backbone pair runs in tests/models/test_every_model.py
FAMILIES = {
    "resnet": ["--model.backbone.name", "resnet18", "--model.masking", "fm"],
    "vit": ["--model.backbone", "TimmBackbone", "--model.backbone.name", "vit_small_patch14_dinov2",
            "--model.backbone.weights", "null", "--model.backbone.model_kwargs",
            '{"depth": 4, "embed_dim": 48, "num_heads": 2}', "--model.masking", "hm"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("net", sorted(MODELS))
def test_fast_dev_run_of_every_model(net: str, family: str, tmp_path: Path) -> None:
    net_args = NET_ARGS.get(net, ["--model.net", net])
    args = ["fit", "--config", DEMO, *TINY, *net_args, *FAMILIES[family],
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cli = build_cli(args)  # what `fss fit ...` (fss.cli.main) runs
    assert type(cli.model.net) is MODELS[net]
    assert type(cli.model.net.backbone).__name__ == {"resnet": "ResNet", "vit": "TimmBackbone"}[family]
    assert cli.model.net.masking.name == FAMILIES[family][-1]
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert {"train/loss", "val/loss", "val/miou"} <= set(cli.trainer.callback_metrics)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    groups = cli.trainer.optimizers[0].param_groups
    if net == "vat":
        assert type(cli.trainer.optimizers[0]) is torch.optim.AdamW
        assert [g["lr"] for g in groups] == [pytest.approx(5e-4), pytest.approx(1e-4)]
    else:
        assert type(cli.trainer.optimizers[0]) is torch.optim.Adam and len(groups) == 1
