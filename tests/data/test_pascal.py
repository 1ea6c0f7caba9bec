"""PASCAL-5i data module on a tiny VOC tree: folds, lists, masks, determinism, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fss.data.common import DatasetFileError, DatasetLayoutError
from fss.data.episode import check_episode
from fss.data.pascal import (
    PASCAL_CLASSES,
    Pascal5iDataset,
    PascalDataModule,
    coco2pascal_class_ids,
    pascal_class_ids,
)
from fss.data.transforms import resize_label
from tests.data.fixtures import make_pascal, pascal_image_classes

N_IMAGES = 40  # per split: every class is in exactly 4 images of each split


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pascal(tmp_path_factory.mktemp("pascal"), n_train=N_IMAGES, n_val=N_IMAGES)


def expected_pairs(year: int, classes: list[int]) -> set[tuple[str, int]]:
    return {
        (f"{year}_00{k:04d}", c) for k in range(N_IMAGES) for c in pascal_image_classes(k) if c in classes
    }


def raw_target(voc_root: Path, name: str, class_id: int) -> torch.Tensor:
    label = np.array(Image.open(voc_root / "VOC2012" / "SegmentationClassAug" / f"{name}.png"))
    target = torch.from_numpy((label == class_id + 1).astype(np.int64))
    target[torch.from_numpy(label == 255)] = 255
    return target


# --------------------------------------------------------------------------------------------- classes
def test_fold_classes_standard() -> None:
    for fold in range(4):
        held_out = pascal_class_ids("test", fold, "standard")
        assert held_out == list(range(5 * fold, 5 * fold + 5))
        train = pascal_class_ids("train", fold, "standard")
        assert sorted(train + held_out) == list(range(20)) and not set(train) & set(held_out)


def test_coco2pascal_classes_match_the_published_mapping() -> None:
    expected = {
        0: {"aeroplane", "boat", "chair", "diningtable", "dog", "person"},
        1: {"bicycle", "bus", "horse", "sofa"},
        2: {"bird", "car", "pottedplant", "sheep", "train", "tvmonitor"},
        3: {"bottle", "cat", "cow", "motorbike"},
    }
    for fold, names in expected.items():
        assert {PASCAL_CLASSES[c] for c in coco2pascal_class_ids(fold)} == names
    with pytest.raises(ValueError, match="coco2pascal is a test split"):
        pascal_class_ids("train", 0, "coco2pascal")


def test_class_split_all_trains_and_validates_on_every_class(tmp_path: Path) -> None:
    """PATNet's cross-domain source: all 20 classes, over every fold's lists (``fold`` is ignored)."""
    voc_root = make_pascal(tmp_path, n_train=N_IMAGES, n_val=N_IMAGES)
    assert pascal_class_ids("train", 2, "all") == pascal_class_ids("val", 0, "all") == list(range(20))
    train = Pascal5iDataset(voc_root, "train", fold=3, class_split="all", num_episodes=None, img_size=32)
    assert set(train.pairs) == expected_pairs(2008, list(range(20)))
    val = Pascal5iDataset(voc_root, "val", class_split="all", num_episodes=10, img_size=32)
    assert set(val.pairs) == expected_pairs(2007, list(range(20)))
    dm = PascalDataModule(root=str(voc_root), class_split="all")
    assert dm.train_class_ids == dm.eval_class_ids == list(range(20))


# ----------------------------------------------------------------------------------------- lists
def test_generated_lists_hold_every_pair_and_are_cached(
    voc_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        val = Pascal5iDataset(voc_root, "val", fold=1, num_episodes=10, img_size=32)
    assert set(val.pairs) == expected_pairs(2007, list(range(5, 10)))
    assert (voc_root / "VOC2012" / ".fss_cache" / "pascal_val_fold1.txt").is_file()
    train = Pascal5iDataset(voc_root, "train", fold=1, num_episodes=None, img_size=32)
    assert set(train.pairs) == expected_pairs(2008, [c for c in range(20) if not 5 <= c < 10])
    assert len(train) == len(train.pairs)  # one epoch = one pass over the training pairs
    assert any("generating" in r.message and "split_dir" in r.message for r in caplog.records)


def test_split_dir_lists_are_used_verbatim(voc_root: Path, tmp_path: Path) -> None:
    for split, year in (("trn", 2008), ("val", 2007)):
        (tmp_path / split).mkdir()
        for fold in range(4):
            lines = [f"{year}_00{k:04d}__{k % 20 + 1:02d}" for k in range(N_IMAGES) if (k % 20) // 5 == fold]
            (tmp_path / split / f"fold{fold}.txt").write_text("\n".join(lines) + "\n")
    ds = Pascal5iDataset(voc_root, "test", fold=0, split_dir=tmp_path, num_episodes=10, img_size=32)
    assert ds.pairs == [(f"2007_00{k:04d}", k % 20) for k in range(N_IMAGES) if k % 20 < 5]
    (tmp_path / "val" / "fold2.txt").write_text("2007_000000__21\n")
    with pytest.raises(ValueError, match=r"fold2\.txt:1"):
        Pascal5iDataset(voc_root, "test", fold=2, split_dir=tmp_path, img_size=32)
    with pytest.raises(DatasetLayoutError, match="fold0.txt"):
        Pascal5iDataset(voc_root, "test", fold=0, split_dir=tmp_path / "nowhere", img_size=32)


# -------------------------------------------------------------------------------------- episodes
def test_masks_keep_ignore_in_query_and_drop_it_in_supports(voc_root: Path) -> None:
    ds = Pascal5iDataset(
        voc_root, "test", fold=0, shot=2, num_episodes=30, img_size=32, use_original_imgsize=True
    )
    for i in range(0, 30, 7):
        ep = ds.episode(i)
        check_episode(ep, shot=2, img_size=32)
        c = int(ep["class_id"])
        assert c in range(5)
        assert torch.equal(ep["org_query_mask"], raw_target(voc_root, ep["query_name"], c))
        assert tuple(ep["org_query_imsize"].tolist()) == (40, 48)
        assert set(ep["query_mask"].unique().tolist()) == {0, 1, 255}
        assert set(ep["support_masks"].unique().tolist()) <= {0.0, 1.0}
        names = ep["support_names"]
        assert ep["query_name"] not in names and len(set(names)) == 2
        for name in names:  # every support shows the class
            assert (raw_target(voc_root, name, c) == 1).any()


@pytest.mark.parametrize(
    ("boundary", "train_has_255", "test_has_255"),
    [("reference", False, True), ("ignore", True, True), ("background", False, False)],
)
def test_boundary_pixels_follow_the_reference_or_the_option(
    voc_root: Path, boundary: str, train_has_255: bool, test_has_255: bool
) -> None:
    """HSNet trains on VOC's boundary pixels as background and ignores them when scoring."""
    for split, expected in (("train", train_has_255), ("test", test_has_255)):
        ds = Pascal5iDataset(voc_root, split, num_episodes=6, img_size=32, boundary=boundary)
        for i in range(6):
            ep = ds.episode(i)
            assert (255 in ep["query_mask"].unique().tolist()) == expected
            assert set(ep["support_masks"].unique().tolist()) <= {0.0, 1.0}
            raw = raw_target(voc_root, ep["query_name"], int(ep["class_id"]))
            fg = resize_label(raw, 32) == 1
            assert torch.equal(ep["query_mask"] == 1, fg)  # the class itself never changes


def test_query_cycles_through_the_list_in_order(voc_root: Path) -> None:
    ds = Pascal5iDataset(voc_root, "test", fold=0, num_episodes=50, img_size=32)
    n = len(ds.pairs)
    assert n < 50
    for i in (0, 1, n - 1, n, 49):
        ep = ds.episode(i)
        assert (ep["query_name"], int(ep["class_id"])) == ds.pairs[i % n]


def test_val_and_test_ignore_the_epoch_but_train_does_not(voc_root: Path) -> None:
    val = Pascal5iDataset(voc_root, "val", fold=0, shot=2, num_episodes=10, img_size=32)
    assert val[3]["support_names"] == val[3 + 10]["support_names"]  # key of (epoch 1, index 3)
    train = Pascal5iDataset(voc_root, "train", fold=0, shot=2, num_episodes=None, img_size=32)
    n = len(train)
    draws = [train[k]["support_names"] for k in (0, n, 2 * n)]  # episode 0 of epochs 0, 1, 2
    assert len({tuple(d) for d in draws}) > 1
    assert all(int(train[k]["class_id"]) >= 5 for k in range(0, n, 9))


def test_test_episodes_do_not_depend_on_worker_count(voc_root: Path) -> None:
    def batches(num_workers: int) -> list[dict]:
        dm = PascalDataModule(
            root=str(voc_root),
            fold=2,
            shot=2,
            img_size=32,
            eval_batch_size=4,
            num_workers=num_workers,
            test_episodes=12,
        )
        dm.setup("test")
        return list(dm.test_dataloader())

    a, b = batches(0), batches(2)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["query_name"] == y["query_name"] and x["support_names"] == y["support_names"]
        assert torch.equal(x["query_img"], y["query_img"]) and torch.equal(
            x["support_masks"], y["support_masks"]
        )


def test_augmented_training_episodes_are_reproducible(voc_root: Path) -> None:
    ds = Pascal5iDataset(voc_root, "train", fold=0, num_episodes=None, img_size=32, augment=True)
    plain = Pascal5iDataset(voc_root, "train", fold=0, num_episodes=None, img_size=32)
    a, b = ds.episode(4, epoch=1), ds.episode(4, epoch=1)
    assert torch.equal(a["query_img"], b["query_img"]) and torch.equal(a["query_mask"], b["query_mask"])
    changed = [not torch.equal(ds.episode(i)["query_img"], plain.episode(i)["query_img"]) for i in range(6)]
    assert any(changed)
    check_episode(a, shot=1, img_size=32)


@pytest.mark.parametrize("augment", [False, True])
def test_class_maps_follow_the_query(voc_root: Path, augment: bool) -> None:
    """``class_maps``: the query's class map (BAM's base-learner labels), augmented with the query."""
    ds = Pascal5iDataset(voc_root, "train", fold=0, num_episodes=None, img_size=32, augment=augment)
    plain = ds.episode(3, epoch=1)
    ds.class_maps = True
    ep = ds.episode(3, epoch=1)
    classes, mask, c = ep["query_classes"], ep["query_mask"], int(ep["class_id"])
    assert classes.shape == mask.shape == (32, 32) and classes.dtype == torch.long
    assert torch.equal(classes == c + 1, mask == 1)
    assert (
        classes[mask == 255] == 255
    ).all()  # boundaries: ignored or background in the mask, 255 in the map
    assert set(classes.unique().tolist()) - {0, 255} >= {c + 1}
    if not augment:  # the same episode as without class maps
        assert torch.equal(ep["query_img"], plain["query_img"]) and torch.equal(mask, plain["query_mask"])


# ---------------------------------------------------------------------------------- data module
def test_datamodule_classes_and_cross_domain_split(voc_root: Path) -> None:
    dm = PascalDataModule(root=str(voc_root), fold=3, class_split="coco2pascal", img_size=32, test_episodes=8)
    assert dm.num_classes == 20 and dm.class_names[0] == "aeroplane"
    assert dm.eval_class_ids == coco2pascal_class_ids(3) == [4, 7, 9, 13]
    dm.setup("test")
    ds = dm.datasets["test"]
    assert set(ds.usable_class_ids) == {4, 7, 9, 13}
    assert {int(ds.episode(i)["class_id"]) for i in range(8)} <= {4, 7, 9, 13}
    assert ds.pairs == sorted(ds.pairs)  # pairs of all four val lists, merged in name order
    with pytest.raises(ValueError, match="coco2pascal is a test split"):
        dm.setup("fit")


# ---------------------------------------------------------------------------------------- errors
def test_missing_root_or_layout_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="(?s)does not exist.*VOC2012/JPEGImages"):
        Pascal5iDataset(tmp_path / "absent", "test")
    (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="SegmentationClassAug"):
        Pascal5iDataset(tmp_path, "test")


def test_missing_val_txt_without_split_dir_is_explained(tmp_path: Path) -> None:
    root = make_pascal(tmp_path, n_train=4, n_val=4, with_val_txt=False)
    with pytest.raises(DatasetLayoutError, match=r"val\.txt.*split_dir"):
        Pascal5iDataset(root, "test", img_size=32)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    root = make_pascal(tmp_path, n_train=4, n_val=20)
    ds = Pascal5iDataset(root, "test", fold=0, num_episodes=5, img_size=32)
    name = ds.pairs[0][0]
    (root / "VOC2012" / "JPEGImages" / f"{name}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFileError, match=f"{name}.jpg"):
        ds.episode(0)


def test_classes_with_too_few_images_are_skipped_or_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_pascal(tmp_path, n_train=4, n_val=N_IMAGES, rare_class=2)
    with caplog.at_level(logging.WARNING):
        ds = Pascal5iDataset(root, "test", fold=0, num_episodes=20, img_size=32)
    assert ds.usable_class_ids == [0, 1, 3, 4]
    assert all(c != 2 for _, c in ds.pairs)
    assert any("skipping 1 class" in r.message and "bird (1)" in r.message for r in caplog.records)
    with pytest.raises(ValueError, match=r"shot\+1=5"):
        Pascal5iDataset(root, "test", fold=0, shot=4, img_size=32)


def test_augment_config_file_is_loaded(voc_root: Path, tmp_path: Path) -> None:
    import albumentations as A

    path = tmp_path / "flip.json"
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(path))
    flipped = Pascal5iDataset(
        voc_root, "train", fold=0, num_episodes=None, img_size=32, augment_config=str(path)
    )
    plain = Pascal5iDataset(voc_root, "train", fold=0, num_episodes=None, img_size=32)
    name, c = plain.pairs[2]
    img_f, tgt_f = flipped.load_pair(name, c, True, np.random.default_rng(0))
    img_p, tgt_p = plain.load_pair(name, c, True, np.random.default_rng(0))
    assert np.array_equal(tgt_f, tgt_p[:, ::-1]) and np.array_equal(img_f, img_p[:, ::-1])
    assert not np.array_equal(tgt_f, tgt_p)
    val = Pascal5iDataset(voc_root, "val", fold=0, num_episodes=5, img_size=32, augment_config=str(path))
    assert not val.augmenter.enabled  # never for val/test
    with pytest.raises(FileNotFoundError, match="augment_config"):
        Pascal5iDataset(voc_root, "train", fold=0, augment_config=str(tmp_path / "missing.json"))


# ---------------------------------------------------------------------------------- PFENet protocol
def test_pfenet_protocol_lists_crops_and_original_label(tmp_path: Path) -> None:
    """``protocol: pfenet``: 2048-pixel pairs, no training image with a held-out class, training crops of
    ``img_size``, evaluation letterboxed (aspect kept, padded) and scored on the original label."""
    root = make_pascal(tmp_path, n_train=N_IMAGES, n_val=N_IMAGES, size=(120, 160))
    voc = root / "VOC2012" / "SegmentationClassAug"
    train = Pascal5iDataset(root, "train", fold=0, num_episodes=None, img_size=64, protocol="pfenet")
    assert train.pairs
    for name, c in train.pairs:
        label = np.array(Image.open(voc / f"{name}.png"))
        assert (label == c + 1).sum() >= 2048
        assert not set(np.unique(label).tolist()) & {1, 2, 3, 4, 5}  # fold 0's classes, 1-based
    hsnet = Pascal5iDataset(root, "train", fold=0, num_episodes=None, img_size=64)
    assert set(train.pairs) < set(hsnet.pairs)
    ep = train.episode(0)
    check_episode(ep, shot=1, img_size=64)

    val = Pascal5iDataset(
        root, "val", fold=0, num_episodes=4, img_size=64, protocol="pfenet", use_original_imgsize=True
    )
    ep = val.episode(1)
    check_episode(ep, shot=1, img_size=64)
    # 120 x 160 -> 48 x 64 (the longer side to 64, the other floored to a multiple of 8), padded below
    assert (ep["query_mask"][48:] == 255).all() and (ep["query_mask"][:48] != 255).any()
    org = ep["org_query_mask"]
    assert org.shape == (160, 160) and (org[120:] == 255).all()
    assert torch.equal(org[:120], raw_target(root, ep["query_name"], int(ep["class_id"])))
