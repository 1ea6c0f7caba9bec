"""FSS-1000 / own folder dataset: class splits, test queries, own-format images, determinism, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fss.data.common import DatasetLayoutError
from fss.data.episode import check_episode
from fss.data.fss1000 import FSS1000DataModule, FSS1000Dataset, class_splits, split_sizes
from tests.data.fixtures import FSS1000_NAMES, make_fss1000, write_fss1000_lists

NAMES = list(FSS1000_NAMES[:6])


@pytest.fixture(scope="module")
def fss_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fss1000(tmp_path_factory.mktemp("fss1000"), n_classes=6, n_images=4)


@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fss1000_lists(tmp_path_factory.mktemp("lists"), NAMES[:3], NAMES[3:4], NAMES[4:])


def test_split_sizes_follow_fss1000_proportions() -> None:
    assert split_sizes(1000) == (520, 240, 240)
    assert split_sizes(3) == (1, 1, 1)
    assert split_sizes(50) == (26, 12, 12)
    with pytest.raises(ValueError, match="at least 3 class folders"):
        split_sizes(2)


def test_seeded_split_is_stable_disjoint_and_announced(
    fss_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        a = class_splits(fss_root, split_seed=7)
    assert a == class_splits(fss_root, split_seed=7)
    assert sorted(a["train"] + a["val"] + a["test"]) == NAMES
    assert [len(a[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert any("official" in r.message for r in caplog.records)
    assert any(class_splits(fss_root, split_seed=s) != a for s in range(8))


def test_split_lists_set_the_classes_and_their_ids(fss_root: Path, lists: Path) -> None:
    test = FSS1000Dataset(fss_root, "test", split_dir=lists, img_size=32)
    assert test.class_names == NAMES[:3] + NAMES[3:4] + sorted(NAMES[4:])
    assert test.class_ids == [4, 5] and test.num_classes == 6
    val = FSS1000Dataset(fss_root, "val", split_dir=lists, img_size=32)
    assert val.class_ids == [3]
    assert int(val.episode(0)["class_id"]) == 3


def test_every_test_image_is_a_query_once(fss_root: Path, lists: Path) -> None:
    ds = FSS1000Dataset(fss_root, "test", shot=2, split_dir=lists, img_size=32)
    assert len(ds) == 2 * 4
    eps = [ds.episode(i) for i in range(len(ds))]
    expected = {f"{name}/{i}" for name in NAMES[4:] for i in range(1, 5)}
    assert {e["query_name"] for e in eps} == expected
    for e in eps:
        check_episode(e, shot=2, img_size=32)
        cls = e["query_name"].split("/")[0]
        assert all(s.startswith(cls + "/") for s in e["support_names"])
        assert e["query_name"] not in e["support_names"] and len(set(e["support_names"])) == 2


def test_mask_is_read_at_the_threshold(fss_root: Path, lists: Path) -> None:
    ds = FSS1000Dataset(fss_root, "test", split_dir=lists, img_size=32, use_original_imgsize=True)
    ep = ds.episode(0)
    name = ep["query_name"]
    raw = np.array(Image.open(fss_root / f"{name}.png"))
    assert torch.equal(ep["org_query_mask"], torch.from_numpy((raw >= 128).astype(np.int64)))
    assert set(ep["query_mask"].unique().tolist()) == {0, 1}


def test_own_dataset_png_images_any_size_and_binary_masks(tmp_path: Path) -> None:
    names = list(FSS1000_NAMES[:4])
    root = make_fss1000(tmp_path / "own", n_classes=4, n_images=3, png_images=[names[1]], vary_size=True)
    Image.fromarray(np.eye(32, 40, dtype=np.uint8)).save(root / names[0] / "1.png")  # a 0/1 mask
    split_dir = write_fss1000_lists(tmp_path / "lists", names[:2], names[2:3], names[3:])
    ds = FSS1000Dataset(root, "train", split_dir=split_dir, img_size=32)
    assert len(ds) == 6
    assert [item[1:] for item in ds.class_items[1]] == [
        ("1.png", "1_mask.png"),
        ("2.png", "2_mask.png"),
        ("3.png", "3_mask.png"),
    ]
    eye = ds.load_target((names[0], "1.jpg", "1.png"), 0, True)
    assert eye.sum() == 32 and eye.max() == 1
    for i in range(len(ds)):
        check_episode(ds.episode(i), shot=1, img_size=32)


def test_mask_rule_threshold_reads_a_01_mask_as_empty_like_hsnet_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_fss1000(tmp_path / "own", n_classes=3, n_images=3)
    Image.fromarray(np.eye(32, dtype=np.uint8)).save(root / FSS1000_NAMES[0] / "1.png")  # a 0/1 mask
    item = (FSS1000_NAMES[0], "1.jpg", "1.png")
    auto = FSS1000Dataset(root, "train", img_size=32, mask_rule="auto")
    assert auto.load_target(item, 0, True).sum() == 32
    threshold = FSS1000Dataset(root, "train", img_size=32, mask_rule="threshold")
    with caplog.at_level(logging.WARNING, logger="fss"):
        assert threshold.load_target(item, 0, True).sum() == 0
        threshold.load_target(item, 0, True)
    warnings = [r.message for r in caplog.records if "holds only 0 and 1" in r.message]
    assert len(warnings) == 1 and "data.mask_rule: auto" in warnings[0]  # once per class folder
    with pytest.raises(ValueError, match="mask_rule must be 'threshold' or 'auto'"):
        FSS1000DataModule(root=str(root), mask_rule="binary")


def test_test_episodes_do_not_depend_on_worker_count(fss_root: Path, lists: Path) -> None:
    def batches(num_workers: int) -> list[dict]:
        dm = FSS1000DataModule(
            root=str(fss_root), split_dir=str(lists), img_size=32, eval_batch_size=3, num_workers=num_workers
        )
        dm.setup("test")
        return list(dm.test_dataloader())

    a, b = batches(0), batches(2)
    assert sum(len(x["query_name"]) for x in a) == 8
    assert [x["support_names"] for x in a] == [x["support_names"] for x in b]
    assert all(torch.equal(x["support_imgs"], y["support_imgs"]) for x, y in zip(a, b))


def test_datamodule_classes_and_episode_counts(fss_root: Path, lists: Path) -> None:
    dm = FSS1000DataModule(root=str(fss_root), split_dir=str(lists), img_size=32, test_episodes=3)
    assert dm.num_classes == 6 and dm.class_names[:3] == NAMES[:3]
    assert dm.eval_class_ids == [4, 5] and dm.train_class_ids == [0, 1, 2]
    dm.setup(None)
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [12, 4, 3]


def test_errors_name_the_file_or_folder(fss_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        FSS1000Dataset(tmp_path / "absent", "test")
    bad_lists = write_fss1000_lists(tmp_path / "lists", ["unicorn"], NAMES[3:4], NAMES[4:])
    with pytest.raises(DatasetLayoutError, match="unicorn"):
        FSS1000Dataset(fss_root, "test", split_dir=bad_lists)
    root = make_fss1000(tmp_path / "own", n_classes=3, n_images=3)
    (root / FSS1000_NAMES[0] / "2.png").unlink()
    split_dir = write_fss1000_lists(
        tmp_path / "own_lists", FSS1000_NAMES[:1], FSS1000_NAMES[1:2], FSS1000_NAMES[2:3]
    )
    with pytest.raises(DatasetLayoutError, match=r"2\.jpg has no mask"):
        FSS1000Dataset(root, "train", split_dir=split_dir)
    few = make_fss1000(tmp_path / "few", n_classes=3, n_images=2)
    with pytest.raises(ValueError, match=r"shot\+1=3"):
        FSS1000Dataset(few, "test", shot=2)
