"""FewShotSegmentationTask: frozen backbone, learner-only optimizer, loss with ignore pixels, metrics."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fss.backbones import ResNet
from fss.data.episode import collate_episodes
from fss.models import MODELS, FewShotSegmenter
from fss.task import FewShotSegmentationTask, masked_cross_entropy

SIZE = 64


#: a random ResNet-18 in the config form (how a checkpoint records it)
RESNET18 = {"class_path": "fss.backbones.ResNet", "init_args": {"name": "resnet18", "weights": None}}


class TinySegmenter(FewShotSegmenter):
    """A 1x1 conv on the cosine similarity between the query and the masked-support prototype."""

    learner_name = "head"
    num_levels = 1

    def __init__(
        self, backbone: str = "resnet18", masking: str = "fm", weights: str | None = None, bias: bool = True
    ) -> None:
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        self.head = nn.Conv2d(1, 2, kernel_size=1, bias=bias)

    def predict_logits(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_mask: Tensor
    ) -> Tensor:
        prototype = support_feats[-1].mean(dim=(2, 3), keepdim=True)
        corr = F.cosine_similarity(query_feats[-1], prototype, dim=1).unsqueeze(1)
        return self.head(corr)


@pytest.fixture(autouse=True)
def _register_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, "tiny", TinySegmenter)


def make_task(**kwargs) -> FewShotSegmentationTask:
    options = {"net": "tiny", "backbone": RESNET18, "masking": "fm", "num_classes": 5}
    return FewShotSegmentationTask(**(options | kwargs))


def make_episode(seed: int, shot: int = 1, org_size: tuple[int, int] | None = None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    query_mask = (torch.rand(SIZE, SIZE, generator=gen) > 0.5).long()
    query_mask[:4] = 255
    episode = {
        "query_img": torch.randn(3, SIZE, SIZE, generator=gen),
        "query_mask": query_mask,
        "support_imgs": torch.randn(shot, 3, SIZE, SIZE, generator=gen),
        "support_masks": (torch.rand(shot, SIZE, SIZE, generator=gen) > 0.5).float(),
        "class_id": torch.tensor(seed % 5),
        "query_name": f"q{seed}",
        "support_names": [f"s{seed}_{k}" for k in range(shot)],
        "org_query_imsize": torch.tensor(org_size or (SIZE, SIZE)),
    }
    if org_size is not None:
        episode["org_query_mask"] = (torch.rand(*org_size, generator=gen) > 0.5).long()
    return episode


def loader(n: int, batch_size: int = 2, **kwargs) -> DataLoader:
    return DataLoader(
        [make_episode(i, **kwargs) for i in range(n)], batch_size=batch_size, collate_fn=collate_episodes
    )


def make_trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(**(options | kwargs))


def test_backbone_stays_frozen_while_learner_trains(tmp_path) -> None:
    task = make_task()
    backbone_before = {k: v.clone() for k, v in task.net.backbone.state_dict().items()}
    learner_before = {k: v.clone() for k, v in task.net.learner.state_dict().items()}
    assert any("running_mean" in k for k in backbone_before)

    make_trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(task, loader(6))

    assert not task.net.backbone.training
    for key, value in task.net.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), f"backbone {key} changed during training"
    changed = [k for k, v in task.net.learner.state_dict().items() if not torch.equal(v, learner_before[k])]
    assert changed, "the learner did not train: the frozen-backbone check would be vacuous"
    task.train()
    assert task.training and task.net.learner.training and not task.net.backbone.training


def test_optimizer_holds_exactly_the_learner_parameters() -> None:
    task = make_task()
    optimizer = task.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == pytest.approx(1e-3)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in task.net.learner.parameters()}
    assert not in_optimizer & {id(p) for p in task.net.backbone.parameters()}


def test_loss_ignores_255_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 6, generator=gen)
    target = torch.randint(0, 2, (2, 5, 6), generator=gen)
    target[:, 0] = 255
    valid = target != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    assert masked_cross_entropy(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)

    perturbed = logits.clone()
    perturbed[:, :, 0] = 100 * torch.randn(2, 2, 6, generator=gen)
    assert masked_cross_entropy(perturbed, target).item() == pytest.approx(expected.item(), rel=1e-6)

    all_ignored = masked_cross_entropy(logits, torch.full_like(target, 255))
    assert all_ignored.item() == 0.0

    task = make_task(fg_weight=3.0)
    weighted = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]), ignore_index=255)
    assert task.loss(logits, target).item() == pytest.approx(weighted.item(), rel=1e-6)
    assert make_task().loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_validation_and_test_log_loss_and_metrics(tmp_path) -> None:
    task = make_task(kshot_rule="mean")
    results = make_trainer(tmp_path).test(task, loader(4, shot=2), verbose=False)[0]
    per_class = {f"test/iou/{c}" for c in range(4)}  # episodes i have class i % 5; no class names here
    assert set(results) == {"test/loss", "test/miou", "test/fbiou"} | per_class
    assert 0 <= results["test/miou"] <= 100 and 0 <= results["test/fbiou"] <= 100
    assert results["test/miou"] == pytest.approx(sum(results[k] for k in per_class) / 4, rel=1e-5)

    # the logged numbers are FewShotIoU over the predictions of predict_step
    preds = make_trainer(tmp_path).predict(task, loader(4, shot=2))
    from fss.metrics import FewShotIoU

    metric = FewShotIoU(5)
    for batch, pred in zip(loader(4, shot=2), preds):
        assert pred.shape == batch["query_mask"].shape and pred.dtype == torch.long
        metric.update(pred, batch["query_mask"], batch["class_id"])
    assert results["test/miou"] == pytest.approx(metric.compute()["miou"].item(), rel=1e-5)

    val = make_trainer(tmp_path).validate(task, loader(2), verbose=False)[0]
    assert set(val) == {"val/loss", "val/miou", "val/fbiou"}


def test_original_size_masks_are_scored_at_their_size(tmp_path) -> None:
    task = make_task()
    results = make_trainer(tmp_path).test(task, loader(2, batch_size=1, org_size=(37, 51)), verbose=False)[0]
    assert 0 <= results["test/miou"] <= 100
    preds = make_trainer(tmp_path).predict(task, loader(2, batch_size=1, org_size=(37, 51)))
    assert [p.shape for batch in preds for p in batch] == [(37, 51), (37, 51)]


def test_unknown_model_names_the_option() -> None:
    with pytest.raises(ValueError, match="model.net") as err:
        FewShotSegmentationTask(net="nope", backbone=RESNET18)
    assert all(name in str(err.value) for name in MODELS)


def test_hyperparameters_describe_what_was_built_and_rebuild_it(tmp_path) -> None:
    """Objects given in Python are recorded in the config form, from which the task is built again."""
    task = make_task(
        net=functools.partial(TinySegmenter, bias=False), backbone=ResNet("resnet18", weights=None)
    )
    assert task.net.head.bias is None
    hparams = dict(task.hparams)
    assert hparams["net"] == {"class_path": "tests.test_task.TinySegmenter", "init_args": {"bias": False}}
    assert hparams["backbone"] == RESNET18 and hparams["masking"] == "fm"
    rebuilt = FewShotSegmentationTask(**hparams)
    assert type(rebuilt.net) is TinySegmenter and rebuilt.net.head.bias is None
    assert rebuilt.net.backbone.name == "resnet18"


def test_pretrained_checkpoint(tmp_path) -> None:
    source = make_task()
    reference = {f"module.{k}": v for k, v in source.net.state_dict().items()}  # DataParallel-style keys
    torch.save(reference, tmp_path / "reference.pt")
    loaded = make_task(pretrained=str(tmp_path / "reference.pt"))
    for key, value in source.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key
    assert loaded.hparams.pretrained == str(tmp_path / "reference.pt")


def test_several_test_seeds_are_scored_as_separate_sets_with_their_spread(tmp_path) -> None:
    """Each set's numbers are those of a plain test with that seed; the summary adds their spread."""
    import json
    import math

    from pytorch_lightning.loggers import CSVLogger

    from fss.callbacks import TestResultsWriter
    from fss.data import SyntheticDataModule
    from fss.metrics import spread

    def data(**kwargs) -> SyntheticDataModule:
        return SyntheticDataModule(img_size=SIZE, batch_size=3, test_episodes=5, **kwargs)

    task = make_task(num_classes=48)
    single = {
        seed: make_trainer(tmp_path).test(task, datamodule=data(seed=seed), verbose=False)[0]
        for seed in (0, 3, 7)
    }
    trainer = make_trainer(tmp_path, logger=CSVLogger(tmp_path, name="sets"), callbacks=[TestResultsWriter()])
    results = trainer.test(task, datamodule=data(test_seeds=[0, 3, 7]), verbose=False)[0]
    for seed in (0, 3, 7):
        for key in ("miou", "fbiou"):
            assert results[f"test/seed{seed}/{key}"] == pytest.approx(single[seed][f"test/{key}"], abs=1e-4)
    mious = [single[s]["test/miou"] for s in (0, 3, 7)]
    expected = spread(mious)
    assert results["test/miou"] == pytest.approx(expected["mean"], abs=1e-4)
    assert results["test/miou_std"] == pytest.approx(expected["std"], abs=1e-4)
    assert results["test/miou_ci95_high"] - results["test/miou"] == pytest.approx(
        4.303 * expected["std"] / math.sqrt(3), abs=1e-3
    )
    summary = json.loads((Path(trainer.log_dir) / "test_results.json").read_text())
    assert summary["episode_sets"] == ["seed0", "seed3", "seed7"]
    assert summary["miou_per_set"] == pytest.approx(mious, abs=1e-3)
    assert set(summary["per_class_iou"]) <= set(SyntheticDataModule(img_size=SIZE).class_names)
    header = (Path(trainer.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"test/seed3/miou", "test/miou_std", "test/fbiou_ci95_low"} <= set(header)
    # the task is reusable: a plain test afterwards is one set again
    again = make_trainer(tmp_path).test(task, datamodule=data(seed=3), verbose=False)[0]
    assert again["test/miou"] == pytest.approx(single[3]["test/miou"], abs=1e-6)
