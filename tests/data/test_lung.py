"""Chest X-ray (PATNet protocol): greyscale radiographs, mask naming, PATNet's exact sequence, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fss.data.common import DatasetLayoutError
from fss.data.lung import LungDataModule, LungDataset, image_stem
from tests.data.fixtures import make_lung
from tests.data.target_checks import assert_episodes_valid, assert_test_only, assert_workers_do_not_matter

# PATNet's own DatasetLung (github slei109/PATNet, data/lung.py, run outside this repo) on
# make_lung(root, montgomery=0) with num=12 after np.random.seed(0): "query supports" as the numbers n
# of the masks CHNCXR_000n_0_mask.png.
PATNET_1SHOT = ["5 1", "3 5", "2 3", "0 5", "3 1", "3 0", "5 0", "2 1", "1 3", "4 2", "4 5", "4 0"]
PATNET_5SHOT = [
    "5 1,3,2,3,0", "5 3,1,3,0,0", "2 1,1,3,4,4", "5 4,0,1,0,3", "4 1,1,1,5,5", "3 2,4,2,2,5",
    "2 1,1,5,5,4", "0 5,2,4,2,5", "3 2,2,1,0,0", "3 4,5,1,1,4", "3 2,1,5,2,0", "1 0,0,0,3,5",
]  # fmt: skip


def numbers(ds: LungDataset) -> list[str]:
    return [f"{q[10]} {','.join(s[10] for s in sup)}" for q, _, sup in ds.reference()]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lung(tmp_path_factory.mktemp("cdfss"))


def test_items_images_and_greyscale(root: Path) -> None:
    ds = LungDataset(root, "test", img_size=32, use_original_imgsize=True)
    assert ds.class_names == ("lung",) and len(ds) == 600
    assert ds.class_items[0][0] == "CHNCXR_0000_0_mask.png" and ds.class_items[0][-1] == "MCUCXR_0005_0.png"
    assert (
        image_stem("CHNCXR_0001_0_mask.png") == "CHNCXR_0001_0"
        and image_stem("MCUCXR_0005_0.png") == "MCUCXR_0005_0"
    )
    assert (
        ds.item_files("MCUCXR_0005_0.png")[0] == root / "LungSegmentation" / "CXR_png" / "MCUCXR_0005_0.png"
    )
    episode = ds.episode(0)
    image = episode["query_img"]
    assert torch.allclose(image[0] * 0.229 + 0.485, image[1] * 0.224 + 0.456, atol=1e-5)  # grey -> RGB
    assert episode["query_mask"].sum() > 0


def test_episodes_and_reference_order(root: Path, tmp_path: Path) -> None:
    assert_episodes_valid(LungDataModule(root=str(root), img_size=32, shot=3), shot=3, img_size=32)
    chn = make_lung(tmp_path, montgomery=0)
    assert (
        numbers(LungDataset(chn, "test", num_episodes=12, episode_order="patnet", img_size=32))
        == PATNET_1SHOT
    )
    five = LungDataset(chn, "test", shot=5, num_episodes=12, episode_order="patnet", img_size=32)
    assert numbers(five) == PATNET_5SHOT


def test_episodes_do_not_depend_on_worker_count(root: Path) -> None:
    assert_workers_do_not_matter(
        lambda num_workers: LungDataModule(
            root=str(root), img_size=32, eval_batch_size=2, test_episodes=4, num_workers=num_workers
        )
    )


def test_test_only_and_data_check(root: Path) -> None:
    assert_test_only(LungDataModule(root=str(root), img_size=32))


def test_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"(?s)no LungSegmentation folder.*CXR_png/<name>.png"):
        LungDataset(tmp_path, "test")
    broken = make_lung(tmp_path / "b")
    (broken / "LungSegmentation" / "CXR_png" / "CHNCXR_0002_0.png").unlink()
    from fss.data.check import DatasetCheckError, check_datamodule

    with pytest.raises(DatasetCheckError, match="missing file .*CHNCXR_0002_0.png"):
        check_datamodule(LungDataModule(root=str(broken), img_size=32))
