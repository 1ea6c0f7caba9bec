"""SUIM (MMT protocol): colour-coded masks, class sets, subsets, the class cache, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fss.data.common import DatasetLayoutError
from fss.data.suim import CLASS_NAMES, CLASS_SETS, SUIMDataModule, SUIMDataset, class_map
from tests.data.fixtures import make_suim, suim_colour
from tests.data.target_checks import assert_episodes_valid, assert_test_only, assert_workers_do_not_matter


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_suim(tmp_path_factory.mktemp("suim"))


def test_colour_code_is_the_class_id(tmp_path: Path) -> None:
    rgb = np.array([[suim_colour(c) for c in range(8)]], dtype=np.int16)
    noisy = np.where(rgb > 0, rgb - 40, 40).astype(np.uint8)  # not exactly 0/255, as the real masks
    Image.fromarray(noisy).save(tmp_path / "m.bmp")
    assert class_map(tmp_path / "m.bmp").tolist() == [list(range(8))]
    assert CLASS_NAMES[1] == "human divers" and CLASS_NAMES[7] == "sea-floor and rocks"


def test_classes_items_and_min_fraction(root: Path) -> None:
    ds = SUIMDataset(root, "test", img_size=32)
    assert ds.class_ids == [1, 2, 3, 4, 5, 6, 7] and len(ds) == 1000
    # fixture image k: class 1 + k % 6 as a blob on sea-floor (7); the class-4 speck is below 1%
    names = ds.mask_names()
    assert len(names) == 12 and ds.class_items[7] == names
    for c in range(1, 7):
        expected = sorted(
            f"{'train_val' if k < 8 else 'TEST'}/d_r_{100 + k}_" for k in range(12) if 1 + k % 6 == c
        )
        assert ds.class_items[c] == expected
    with_speck = SUIMDataset(root, "test", img_size=32, min_fraction=0.0)
    assert len(with_speck.class_items[4]) == 12
    test_only = SUIMDataset(root, "test", img_size=32, subsets=["TEST"])
    assert test_only.class_items[7] == [n for n in names if n.startswith("TEST/")]


def test_class_sets_and_targets(root: Path) -> None:
    dm = SUIMDataModule(root=str(root), img_size=32, class_set="target", shot=1)
    assert dm.eval_class_ids == list(CLASS_SETS["target"]) == [2, 3, 4, 5, 7]
    assert_episodes_valid(dm, shot=1, img_size=32, n=10)
    episode = dm.datasets["test"].episode(4)  # class 7: everything but the blob
    assert int(episode["class_id"]) == 7 and 0.4 < episode["query_mask"].float().mean() < 1.0


def test_class_index_is_cached(tmp_path: Path) -> None:
    root = make_suim(tmp_path)
    SUIMDataset(root, "test", img_size=32)
    cached = list((root / "SUIM" / ".fss_cache").glob("suim_classes_*.txt"))
    assert len(cached) == 1
    cached[0].write_text("TEST/d_r_108_ 3\nTEST/d_r_109_ 3\n")  # the cache is what is read
    again = SUIMDataset(root, "val", img_size=32)
    assert again.class_items[3] == ["TEST/d_r_108_", "TEST/d_r_109_"] and again.class_items[7] == []
    assert again.usable_class_ids == [3]
    cached[0].unlink()


def test_episodes_do_not_depend_on_worker_count(root: Path) -> None:
    assert_workers_do_not_matter(
        lambda num_workers: SUIMDataModule(
            root=str(root), img_size=32, eval_batch_size=3, test_episodes=6, num_workers=num_workers
        )
    )


def test_test_only_and_data_check(root: Path) -> None:
    assert_test_only(SUIMDataModule(root=str(root), img_size=32))


def test_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"(?s)no SUIM folder.*TEST/masks/<name>.bmp"):
        SUIMDataset(tmp_path, "test")
    with pytest.raises(ValueError, match="class_set"):
        SUIMDataModule(root=str(root), class_set="novel")
    with pytest.raises(ValueError, match="subsets"):
        SUIMDataset(root, "test", subsets=["train"])
    with pytest.raises(ValueError, match="MMT's is not"):
        SUIMDataModule(root=str(root), episode_order="patnet")
