"""``fss pretrain``: a backbone classifier that only ever sees the training folds' synthetic classes."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fss import pretrain as pretrain_mod
from fss.backbones import ResNet
from fss.data.synthetic import SyntheticFSS, render_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fold", [2])
def test_pretrain_renders_only_training_classes_and_saves_a_loadable_backbone(
    fold: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[tuple[int, int, int]] = []

    def spy(rng: np.random.Generator, size: int, target: int, lo: int = 1, hi: int = 3):
        rendered.append((target, lo, hi))
        return render_scene(rng, size, target, lo, hi)

    monkeypatch.setattr(pretrain_mod, "render_scene", spy)
    out = tmp_path / "bb.pth"
    summary = pretrain_mod.pretrain(
        output=str(out), fold=fold, img_size=32, steps=3, batch_size=12, eval_images=36, seed=1
    )
    held_out = set(SyntheticFSS.split_class_ids("val", fold))
    targets = {t for t, _, _ in rendered}
    assert len(rendered) == 3 * 12 + 36
    assert targets and not targets & held_out, "a held-out class was rendered"
    assert targets <= set(SyntheticFSS.split_class_ids("train", fold))
    assert len({t for t, _, _ in rendered[-36:]}) == 36  # the evaluation covers every training class
    assert all(lo == hi == 0 for _, lo, hi in rendered)  # no distractors, so no other class appears
    assert summary["train_class_ids"] == SyntheticFSS.split_class_ids("train", fold)
    assert set(summary["held_out_class_ids"]) == held_out
    assert 0 <= summary["heldout_render_accuracy"] <= 100 and summary["train_time_s"] >= 0
    assert json.loads(out.with_suffix(".json").read_text()) == summary
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    backbone = ResNet("resnet18", weights=str(out))  # the model.backbone.weights path loads key for key
    assert torch.equal(backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    random_backbone = ResNet("resnet18", weights=None)
    assert not torch.equal(random_backbone.layer1[0].bn1.running_mean, backbone.layer1[0].bn1.running_mean)


def test_pretrain_command_reads_the_shipped_config() -> None:
    config = REPO / "configs" / "pretrain_synthetic.yaml"
    kwargs = pretrain_mod.parse_options(["--config", str(config), "--steps", "7"])
    assert kwargs["steps"] == 7 and kwargs["fold"] == 0 and kwargs["backbone"] == "resnet18"
    assert kwargs["output"] == "runs/pretrain_synthetic/resnet18_fold0.pth"
    assert str(pretrain_mod.output_path(config)) == kwargs["output"]
    assert set(kwargs) == set(inspect.signature(pretrain_mod.pretrain).parameters)


def test_pretrain_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fold must be in"):
        pretrain_mod.pretrain(output=str(tmp_path / "x.pth"), fold=4, steps=1)
    with pytest.raises(ValueError, match="torchvision ResNet"):
        pretrain_mod.pretrain(output=str(tmp_path / "x.pth"), backbone="vgg16", steps=1)
