"""ISIC2018 (PATNet protocol): preparation from the download, classes, PATNet's exact sequence, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fss.data.common import DatasetLayoutError
from fss.data.isic import ISIC_CLASS_ORDER, ISICDataModule, ISICDataset, prepare_isic, read_classes
from fss.data.prepare import PrepareError
from fss.data.prepare import main as prepare_main
from tests.data.fixtures import ISIC_DIAGNOSES, make_isic, make_isic_download
from tests.data.target_checks import assert_episodes_valid, assert_test_only, assert_workers_do_not_matter

# PATNet's own DatasetISIC (github slei109/PATNet, data/isic.py, run outside this repo) on make_isic(root)
# with num=12 after np.random.seed(0), as its test.py seeds: "query class supports".
PATNET_1SHOT = [
    "1/ISIC_0001024 0 1/ISIC_0001006", "2/ISIC_0001027 1 2/ISIC_0001009", "3/ISIC_0001012 2 3/ISIC_0001003",
    "1/ISIC_0001015 0 1/ISIC_0001006", "2/ISIC_0001018 1 2/ISIC_0001009", "3/ISIC_0001021 2 3/ISIC_0001003",
    "1/ISIC_0001006 0 1/ISIC_0001024", "2/ISIC_0001000 1 2/ISIC_0001009", "3/ISIC_0001003 2 3/ISIC_0001012",
    "1/ISIC_0001015 0 1/ISIC_0001024", "2/ISIC_0001027 1 2/ISIC_0001018", "3/ISIC_0001030 2 3/ISIC_0001003",
]  # fmt: skip
PATNET_5SHOT_FIRST = [
    "1/ISIC_0001024 0 1/ISIC_0001006,1/ISIC_0001015,1/ISIC_0001015,1/ISIC_0001006,1/ISIC_0001006",
    "2/ISIC_0001009 1 2/ISIC_0001000,2/ISIC_0001018,2/ISIC_0001018,2/ISIC_0001000,2/ISIC_0001018",
    "3/ISIC_0001003 2 3/ISIC_0001030,3/ISIC_0001021,3/ISIC_0001030,3/ISIC_0001012,3/ISIC_0001012",
    "1/ISIC_0001006 0 1/ISIC_0001015,1/ISIC_0001024,1/ISIC_0001024,1/ISIC_0001015,1/ISIC_0001024",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_isic(tmp_path_factory.mktemp("cdfss"))


def identities(ds: ISICDataset) -> list[str]:
    return [f"{q} {c} {','.join(sup)}" for q, c, sup in ds.reference()]


def test_preparation_groups_images_by_diagnosis(root: Path) -> None:
    ds = ISICDataset(root, "test", img_size=32)
    assert ds.class_names == ("seborrheic_keratosis", "nevus", "melanoma") == ISIC_CLASS_ORDER
    # fixture image k has diagnosis ISIC_DIAGNOSES[k % 3]; the last (k = 11) has none and is left out
    for c, name in enumerate(ISIC_CLASS_ORDER):
        expected = [f"{c + 1}/ISIC_{1000 + 3 * k:07d}" for k in range(11) if ISIC_DIAGNOSES[k % 3] == name]
        assert ds.class_items[c] == expected
    assert len(ds) == 600 and ds.root == root / "ISIC"


def test_episodes_and_reference_order(root: Path) -> None:
    assert_episodes_valid(ISICDataModule(root=str(root), img_size=32, shot=2), shot=2, img_size=32)
    one = ISICDataset(root, "test", num_episodes=12, episode_order="patnet", img_size=32)
    assert identities(one) == PATNET_1SHOT
    five = ISICDataset(root, "test", shot=5, num_episodes=4, episode_order="patnet", img_size=32)
    assert identities(five) == PATNET_5SHOT_FIRST


def test_episodes_do_not_depend_on_worker_count(root: Path) -> None:
    assert_workers_do_not_matter(
        lambda num_workers: ISICDataModule(
            root=str(root), img_size=32, eval_batch_size=3, test_episodes=6, num_workers=num_workers
        )
    )


def test_test_only_and_data_check(root: Path) -> None:
    assert_test_only(ISICDataModule(root=str(root), img_size=32))


def test_prepare_is_resumable_and_reads_both_csv_formats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_isic_download(tmp_path / "download", n_images=9)
    for p in src.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    dst = tmp_path / "root"
    assert prepare_main(["isic", "--src", str(src), "--dst", str(dst)]) == 0
    assert "seborrheic_keratosis 2, nevus 3, melanoma 3, unlabelled 1" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    copied = dst / "ISIC" / "ISIC2018_Task1-2_Training_Input" / "2" / "ISIC_0001000.jpg"
    assert copied.read_bytes() == (src / "ISIC2018_Task1-2_Training_Input" / "ISIC_0001000.jpg").read_bytes()
    # a second run has nothing left to do
    assert prepare_main(["isic", "--src", str(src), "--dst", str(dst)]) == 0
    assert "8 of 8 already done" in capsys.readouterr().out
    for p in src.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    # the ISIC 2017 part-3 ground truth gives the same classes
    gt = tmp_path / "gt2017.csv"
    rows = read_classes(src / "class_id.csv")
    gt.write_text(
        "image_id,melanoma,seborrheic_keratosis\n"
        + "".join(
            f"{k},{float(v == 'melanoma')},{float(v == 'seborrheic_keratosis')}\n" for k, v in rows.items()
        )
    )
    assert read_classes(gt) == rows
    counts = prepare_isic(
        src, tmp_path / "other", classes=gt, class_order=["nevus", "melanoma", "seborrheic_keratosis"]
    )
    assert counts["nevus"] == 3
    assert len(list((tmp_path / "other" / "ISIC" / "ISIC2018_Task1-2_Training_Input" / "1").iterdir())) == 3


def test_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"(?s)no ISIC folder.*ISIC2018_Task1-2_Training_Input/<k>"):
        ISICDataset(tmp_path, "test")
    src = make_isic_download(tmp_path / "dl", n_images=4)
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\nISIC_0001000,nevus\n")
    with pytest.raises(PrepareError, match="expected ID,Class"):
        prepare_isic(src, tmp_path / "out", classes=bad)
    bad.write_text("ID,Class\nISIC_0001000,basal_cell\n")
    with pytest.raises(PrepareError, match="unknown classes \\['basal_cell'\\]"):
        prepare_isic(src, tmp_path / "out", classes=bad)
    with pytest.raises(PrepareError, match="--class-order"):
        prepare_isic(src, tmp_path / "out", class_order=["nevus", "nevus", "melanoma"])
    (src / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0001003_segmentation.png").unlink()
    with pytest.raises(PrepareError, match="ISIC_0001003.jpg has no mask"):
        prepare_isic(src, tmp_path / "out")
