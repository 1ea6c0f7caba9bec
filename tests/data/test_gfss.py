"""GFSS test episodes (``data.gfss``, ``fss/data/gfss.py``): BAM's label construction and class choice,
on the synthetic set and on tiny PASCAL and COCO trees in the real formats."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fss.data import COCO20iDataModule, PascalDataModule, SyntheticDataModule
from fss.data.episode import check_episode
from fss.data.gfss import choose_novel_class, gfss_label
from fss.data.transforms import resize_label
from tests.data.fixtures import make_coco, make_pascal

N_VAL = 40


def test_gfss_label_by_hand() -> None:
    # base classes 5 and 6 (map values 6, 7) -> labels 1, 2; novel class 0 (value 1) -> 3;
    # novel class 20 (value 21), not the episode's -> background; 255 kept (or background)
    class_map = np.array([[0, 6, 1], [21, 255, 7]], dtype=np.uint8)
    assert gfss_label(class_map, [5, 6], 0).tolist() == [[0, 1, 3], [0, 255, 2]]
    assert gfss_label(class_map, [5, 6], 20).tolist() == [[0, 1, 0], [3, 255, 2]]
    assert gfss_label(class_map, [5, 6], 0, ignore=False).tolist() == [[0, 1, 3], [0, 0, 2]]


def test_novel_class_choice_follows_the_reference_rule() -> None:
    rng = np.random.default_rng(0)
    base, novel = [5, 6, 7], [0, 1, 2, 3]
    # no base class shown: one of the novel classes shown
    assert {choose_novel_class(rng, {1, 3}, base, novel) for _ in range(50)} == {1, 3}
    # a base class shown: any novel class, shown or not
    assert {choose_novel_class(rng, {1, 6}, base, novel) for _ in range(200)} == {0, 1, 2, 3}
    # nothing shown (the reference fails there): any novel class
    assert {choose_novel_class(rng, set(), base, novel) for _ in range(200)} == {0, 1, 2, 3}


# -------------------------------------------------------------------------------------------- synthetic
def test_synthetic_gfss_episodes() -> None:
    dm = SyntheticDataModule(img_size=48, test_episodes=12, gfss=True, class_maps=True)
    dm.setup("fit")
    assert not dm.datasets["train"].gfss and not dm.datasets["val"].gfss  # GFSS only changes the test
    dm.setup("test")
    test = dm.datasets["test"]
    base = sorted(dm.train_class_ids)
    assert base == list(range(12, 48))
    chosen = []
    for i in range(12):
        ep = test[i]
        check_episode(ep, shot=1, img_size=48)
        novel, classes = int(ep["class_id"]), ep["query_classes"].numpy().astype(np.uint8)
        assert novel in dm.eval_class_ids
        assert torch.equal(
            ep["gfss_mask"], torch.from_numpy(gfss_label(classes, base, novel).astype(np.int64))
        )
        assert torch.equal(ep["query_mask"], (ep["gfss_mask"] == 37).long())
        assert ep["support_masks"].sum() > 0  # the supports show the novel class
        shown = {int(v) - 1 for v in np.unique(classes) if v}
        if not shown & set(base):
            assert novel in shown
        chosen.append(novel)
        assert torch.equal(test[i]["gfss_mask"], ep["gfss_mask"])  # a pure function of the index
    assert len(set(chosen)) > 3


def test_gfss_and_fscs_do_not_mix() -> None:
    with pytest.raises(ValueError, match="data.gfss and data.fscs"):
        SyntheticDataModule(gfss=True, fscs=True)


# -------------------------------------------------------------------------------------------- PASCAL
@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pascal(tmp_path_factory.mktemp("pascal_gfss"), n_train=8, n_val=N_VAL, size=(60, 80))


def raw_label(voc_root: Path, name: str) -> np.ndarray:
    return np.array(Image.open(voc_root / "VOC2012" / "SegmentationClassAug" / f"{name}.png"))


def test_pascal_gfss_queries_every_val_image_in_order(voc_root: Path) -> None:
    dm = PascalDataModule(root=str(voc_root), fold=0, img_size=32, test_episodes=N_VAL + 3, gfss=True)
    dm.setup("test")
    test = dm.datasets["test"]
    names = (voc_root / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    base = list(range(5, 20))
    for i in (0, 1, 7, N_VAL + 2):
        ep = test.episode(i)
        check_episode(ep, shot=1, img_size=32)
        assert ep["query_name"] == names[i % N_VAL]
        novel = int(ep["class_id"])
        assert novel in range(5)
        label = torch.from_numpy(
            gfss_label(raw_label(voc_root, names[i % N_VAL]), base, novel).astype(np.int64)
        )
        assert torch.equal(ep["gfss_mask"], resize_label(label, 32))
        assert torch.equal(
            ep["query_mask"], resize_label(torch.where(label == 255, 255, (label == 16).long()), 32)
        )
        (support,) = ep["support_names"]
        assert support != ep["query_name"] and (raw_label(voc_root, support) == novel + 1).any()


def test_pascal_gfss_under_the_pfenet_protocol_scores_the_padded_original_label(tmp_path: Path) -> None:
    voc_root = make_pascal(tmp_path, n_train=4, n_val=N_VAL, size=(120, 160))  # PFENet's lists: 2048 px
    dm = PascalDataModule(
        root=str(voc_root), fold=1, img_size=32, test_episodes=4, gfss=True, protocol="pfenet",
        use_original_imgsize=True, eval_batch_size=1,
    )  # fmt: skip
    dm.setup("test")
    ep = dm.datasets["test"].episode(2)
    novel, base = int(ep["class_id"]), [c for c in range(20) if c not in range(5, 10)]
    label = gfss_label(raw_label(voc_root, ep["query_name"]), base, novel)
    org = ep["org_gfss_mask"]
    assert org.shape == (160, 160) and (org[120:] == 255).all()
    assert torch.equal(org[:120], torch.from_numpy(label.astype(np.int64)))
    assert torch.equal(ep["org_query_mask"], torch.where(org == 255, 255, (org == 16).long()))
    # 120 x 160 -> 24 x 32, padded below with ignore
    assert (ep["gfss_mask"][24:] == 255).all() and (ep["gfss_mask"][:24] != 255).any()


def test_a_novel_class_with_too_few_images_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_pascal(tmp_path, n_train=4, n_val=N_VAL, rare_class=2)
    dm = PascalDataModule(root=str(root), fold=0, img_size=32, test_episodes=40, gfss=True)
    with caplog.at_level(logging.WARNING):
        dm.setup("test")
    assert "GFSS leaves out the novel classes" in caplog.text and "{2: 1}" in caplog.text
    assert {int(dm.datasets["test"].episode(i)["class_id"]) for i in range(40)} <= {0, 1, 3, 4}


# ---------------------------------------------------------------------------------------------- COCO
def test_coco_gfss_needs_png_masks(tmp_path: Path) -> None:
    classes = (0, 1, 4, 5, 20)  # fold 0 (interleaved): 0, 4 and 20 are novel, 1 and 5 base
    root = make_coco(tmp_path / "both", classes=classes, n_train=4, n_val=12)
    dm = COCO20iDataModule(root=str(root), fold=0, img_size=32, test_episodes=6, gfss=True)
    dm.setup("test")
    base = [c for c in range(80) if c % 4]
    for i in range(6):
        ep = dm.datasets["test"].episode(i)
        check_episode(ep, shot=1, img_size=32)
        assert int(ep["class_id"]) in (0, 4, 20)
        values = set(torch.unique(ep["gfss_mask"]).tolist())
        assert values <= {0, 61, base.index(1) + 1, base.index(5) + 1}
    json_only = make_coco(tmp_path / "json", classes=classes, n_train=4, n_val=12, write_png=False)
    dm = COCO20iDataModule(root=str(json_only), fold=0, img_size=32, test_episodes=6, gfss=True)
    with pytest.raises(ValueError, match="semantic PNG masks"):
        dm.setup("test")
