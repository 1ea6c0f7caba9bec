"""The task's FS-CS mode: the iFSL head on the network, L_S / L_C, ER and FS-CS mIoU, the CLI and configs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fss.cli import build_cli, main
from fss.data import SyntheticDataModule
from fss.metrics import ExactRatio, FSCSIoU
from fss.models import BAM, MODELS, ASNet, HSNet, NTRENet
from fss.models.ifsl import classification_loss, segmentation_loss
from fss.task import FewShotSegmentationTask
from tests.test_models_cli import NET_ARGS
from tests.test_models_cli import TINY_RUN as TINY
from tests.test_task import RESNET18, TinySegmenter, make_trainer

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = str(REPO / "configs" / "synthetic_fscs_hsnet_hm.yaml")
FSCS_CONFIGS = sorted(
    p.name for p in (REPO / "configs").glob("*_fscs_*.yaml") if not p.name.startswith("synthetic")
)


@pytest.fixture(autouse=True)
def _register_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, "tiny", TinySegmenter)
    monkeypatch.setattr(sys, "argv", ["fss"])  # LightningCLI warns about pytest's own argv


def fscs_data(way: int = 2, shot: int = 1, **kwargs) -> SyntheticDataModule:
    options = dict(fscs=True, way=way, shot=shot, img_size=64, batch_size=2, val_episodes=4, test_episodes=4)
    dm = SyntheticDataModule(**(options | kwargs))
    dm.setup("fit")
    dm.setup("test")
    return dm


def make_task(**kwargs) -> FewShotSegmentationTask:
    options = {"net": "tiny", "backbone": RESNET18, "masking": "fm", "fscs": True}
    options["num_classes"] = SyntheticDataModule.dataset_class.num_classes
    return FewShotSegmentationTask(**(options | kwargs))


def first_batch(dm: SyntheticDataModule, split: str = "val") -> dict:
    return next(iter(getattr(dm, f"{split}_dataloader")()))


def test_logged_er_and_miou_are_the_metrics_of_the_predictions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = fscs_data(shot=2)
    task = make_task()
    results = make_trainer(tmp_path).test(task, dm.test_dataloader(), verbose=False)[0]
    assert set(results) == {"test/loss", "test/er", "test/miou"}

    er, iou = ExactRatio(), FSCSIoU(dm.num_classes)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            prediction = task.fscs_predict(batch)
            assert prediction.presence.shape == (2, 2) and prediction.mask.shape == (2, 64, 64)
            assert prediction.log_probs.shape[:3] == (2, 2, 2)  # [B, N, K shots, ...]
            er.update(prediction.presence, batch["query_class_presence"])
            iou.update(prediction.mask, batch["query_mask"], batch["support_classes"])
    assert results["test/er"] == pytest.approx(er.compute().item())
    assert results["test/miou"] == pytest.approx(iou.compute()["miou"].item(), rel=1e-5)
    preds = make_trainer(tmp_path).predict(task, dm.test_dataloader())
    assert all(p.shape == (2, 64, 64) and int(p.max()) <= 2 for p in preds)  # (N+1)-class masks


def test_the_loss_is_l_s_with_masks_and_l_c_with_class_tags() -> None:
    torch.manual_seed(0)
    batch = first_batch(fscs_data())
    for weak in (False, True):
        task = make_task(weak=weak)
        prediction = task.fscs_predict(batch)
        loss = task.fscs_loss(prediction, batch)
        if weak:
            expected = classification_loss(prediction.log_probs[:, :, 0], batch["query_class_presence"])
        else:
            expected = segmentation_loss(prediction.merged, batch["query_mask"])
        assert loss.item() == pytest.approx(expected.item())
        # L_C never reads the query mask; L_S does
        changed = dict(batch, query_mask=torch.zeros_like(batch["query_mask"]))
        assert (task.fscs_loss(prediction, changed).item() == loss.item()) is weak


def test_training_moves_the_learner_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = fscs_data(train_episodes=4)
    task = make_task(lr=1e-2)
    before = {k: v.clone() for k, v in task.net.state_dict().items()}
    make_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(task, dm.train_dataloader())
    after = task.net.state_dict()
    assert not torch.equal(before["head.bias"], after["head.bias"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))


def test_original_size_evaluation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = fscs_data(use_original_imgsize=True, batch_size=1)
    results = make_trainer(tmp_path).validate(make_task(), dm.val_dataloader(), verbose=False)[0]
    assert set(results) == {"val/loss", "val/er", "val/miou"}
    assert 0 <= results["val/miou"] <= 100


def test_fs_s_batches_in_fscs_mode_are_a_clear_error() -> None:
    batch = first_batch(fscs_data())
    fs_s = {k: v for k, v in batch.items() if k != "query_class_presence"}
    with pytest.raises(ValueError, match="data.fscs"):
        make_task().validation_step(fs_s, 0)


def test_way_index_masks_scale_way_n_by_n_plus_1() -> None:
    batch = first_batch(fscs_data(way=3))
    seen = []

    class Spy(TinySegmenter):
        def masked_features(self, query_img, s_img, s_mask):
            seen.append(s_mask.flatten(1).amax(dim=1).view(-1, 3))  # [B, N] (K = 1)
            return super().masked_features(query_img, s_img, s_mask)

    task = make_task(net=Spy, support_mask_values="way_index")
    task.fscs_predict(batch)
    present = batch["support_masks"].flatten(2).amax(dim=2) > 0  # ways whose support mask is not empty
    expected = torch.tensor([1.0, 2.0, 3.0]).expand_as(present) * present
    assert torch.equal(seen[0], expected)


# -- the authors' checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [HSNet, ASNet])
def test_load_reference_state_dict_reads_an_ifsl_lightning_checkpoint(cls, tmp_path: Path) -> None:
    """A checkpoint built as the iFSL code saves one: a Lightning file whose ``state_dict`` holds the
    module's ``backbone.*`` (torchvision names, with ``fc``) and ``learner.*`` (also for HSNet)."""
    torch.manual_seed(0)
    source = cls("resnet18", masking="fm", weights=None)
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith(source.learner_name + "."):
            key = "learner." + key.removeprefix(source.learner_name + ".")
        state[key] = value.half() if key.startswith("learner.encoder_layer4") else value
    state["backbone.fc.weight"], state["backbone.fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(
        {"epoch": 7, "pytorch-lightning_version": "1.3.8", "state_dict": state}, tmp_path / "best_model.ckpt"
    )

    torch.manual_seed(1)
    loaded = cls("resnet18", masking="fm", weights=None)
    loaded.load_reference_state_dict(tmp_path / "best_model.ckpt")
    for key, value in source.state_dict().items():
        expected = value.half().float() if ".encoder_layer4" in key else value
        assert torch.equal(loaded.state_dict()[key], expected), key
    task = FewShotSegmentationTask(
        net=cls.__name__.lower(),
        backbone=RESNET18,
        masking="fm",
        fscs=True,
        pretrained=str(tmp_path / "best_model.ckpt"),
    )
    assert torch.equal(task.net.learner.decoder2[-1].weight, source.learner.decoder2[-1].weight)


# -- the command line and the shipped configs -----------------------------------------------------------


@pytest.mark.parametrize("support_label", ["mask", "tag"])
def test_fss_fit_fast_dev_run(support_label: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fit", "--config", SYNTHETIC, *TINY, "--data.support_label", support_label]
    main([*argv, "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)])
    # the links: the episodes decide the mode, class tags the loss
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*argv, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["fscs"] is True
    assert "fscs" not in printed["model"] and "weak" not in printed["model"]  # linked, not options


@pytest.mark.parametrize("cls", [BAM, NTRENet])
def test_fss_fit_fast_dev_run_of_the_prototype_family(
    cls: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BAM and NTRENet train on 2-way FS-CS episodes through the CLI: the iFSL loss alone (their own
    auxiliary terms are not logged: FS-CS training leaves them out), the ways' classes reach the
    network in training only (BAM leaves each way's class out of its base map)."""
    seen: list[torch.Tensor | None] = []
    way_logits = cls.way_logits

    def spy(self, query_img, support_imgs, support_masks, way_classes=None):
        seen.append(None if way_classes is None else way_classes.clone())
        return way_logits(self, query_img, support_imgs, support_masks, way_classes)

    monkeypatch.setattr(cls, "way_logits", spy)
    net_args = NET_ARGS[cls.__name__.lower()]
    cli = build_cli(["fit", "--config", SYNTHETIC, *TINY, *net_args, "--trainer.fast_dev_run", "1",
                     "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert type(cli.model.net) is cls and cli.trainer.state.finished and cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    assert {"train/loss", "train/er", "train/miou", "val/loss", "val/er", "val/miou"} <= set(metrics)
    assert not any(key.startswith("train/loss_") and key != "train/loss_step" for key in metrics)
    assert torch.isfinite(metrics["train/loss"])
    train, val = seen  # fast_dev_run: one training batch, one validation batch
    assert train is not None and train.shape == (2, 2) and val is None
    if cls is BAM:
        assert set(train.flatten().tolist()) <= set(cli.model.net.base_class_ids.tolist())


@pytest.mark.slow
def test_fss_fit_logs_er_and_miou_and_test_writes_them(tmp_path: Path) -> None:
    argv = ["--config", SYNTHETIC, *TINY, "--trainer.default_root_dir", str(tmp_path)]
    main(["fit", *argv, "--trainer.max_epochs", "1", "--data.support_label", "tag"])
    (version,) = sorted(tmp_path.glob("version_*"))
    header = (version / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/er", "val/miou", "train/er", "train/miou", "val/loss"} <= set(header)
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert hparams["fscs"] is True and hparams["weak"] is True
    (ckpt,) = sorted((version / "checkpoints").glob("best-*.ckpt"))
    main(["test", *argv, "--ckpt_path", str(ckpt), "--trainer.callbacks+=fss.callbacks.TestResultsWriter"])
    results = json.loads(next(tmp_path.rglob("test_results.json")).read_text())
    assert set(results) == {"test_er", "test_miou", "per_class_iou"}
    assert 0 <= results["test_er"] <= 100 and not math.isnan(results["test_miou"])


@pytest.mark.parametrize("config", FSCS_CONFIGS)
def test_fscs_configs_follow_the_reference_recipe(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    dataset, _, net, masking = config.removesuffix(".yaml").split("_")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model, data = printed["model"], printed["data"]["init_args"]
    assert model["net"]["class_path"] == f"fss.models.{MODELS[net].__name__}" and model["masking"] == masking
    assert (model["optimizer"], model["lr"]) == ("adam", 1e-3)
    assert (data["fscs"], data["way"], data["shot"], data["support_label"]) == (True, 1, 1, "mask")
    assert (data["img_size"], data["batch_size"], data["eval_batch_size"]) == (400, 12, 1)
    assert data["use_original_imgsize"] is True
    assert printed["trainer"]["default_root_dir"] == f"runs/{config.removesuffix('.yaml')}_fold0"
