"""``fss data check``: per-fold report, the first missing/unreadable file, the shipped configs' data sections."""

from __future__ import annotations

from pathlib import Path

import pytest

import fss.data
from fss.data.check import DatasetCheckError, check_datamodule, load_datamodule, main
from fss.data.coco import COCO20iDataModule
from fss.data.fss1000 import FSS1000DataModule
from fss.data.pascal import PascalDataModule
from tests.data.fixtures import make_coco, make_fss1000, make_pascal

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("check")
    return {
        "pascal": make_pascal(base / "pascal", n_train=20, n_val=20),
        "coco": make_coco(base / "coco", classes=tuple(range(8)), n_train=8, n_val=8),  # 2 classes per fold
        "fss1000": make_fss1000(base / "fss", n_classes=5, n_images=3),
    }


def test_report_lists_every_fold_with_counts(roots: dict[str, Path]) -> None:
    report = check_datamodule(PascalDataModule(root=str(roots["pascal"]), img_size=32))
    lines = report.splitlines()
    assert lines[0].startswith("PascalDataModule") and lines[-1] == "OK"
    fold0 = next(line for line in lines if line.startswith("fold 0:"))
    # 20 images per split: a class is in 2 val images; fold 0 val classes 0..4 are in images 0-4, 10-14
    assert "test: 5 classes, 10 images, 1000 episodes" in fold0 and "train: 15 classes" in fold0
    assert [line[:6] for line in lines if line.startswith("fold")] == ["fold 0", "fold 1", "fold 2", "fold 3"]
    assert "files: 80 images and masks readable" in report  # 40 jpg + 40 png, each checked once

    report = check_datamodule(FSS1000DataModule(root=str(roots["fss1000"]), img_size=32))
    assert "train: 3 classes, 9 images" in report and "test: 1 classes, 3 images, 3 episodes" in report
    report = check_datamodule(
        COCO20iDataModule(root=str(roots["coco"]), mask_source="json"), verify_files=False
    )
    assert "fold 3: train" in report and "files:" not in report


def test_first_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    root = make_pascal(tmp_path, n_train=20, n_val=20)
    PascalDataModule(root=str(root), img_size=32).setup(None)  # builds and caches the episode lists
    mask = root / "VOC2012" / "SegmentationClassAug" / "2008_000003.png"
    mask.rename(tmp_path / "kept.png")
    with pytest.raises(DatasetCheckError, match=r"(?s)fold 0:.*PROBLEM: missing file .*2008_000003\.png"):
        check_datamodule(PascalDataModule(root=str(root), img_size=32))
    (tmp_path / "kept.png").rename(mask)
    (root / "VOC2012" / "JPEGImages" / "2007_000001.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetCheckError, match=r"unreadable file .*2007_000001\.jpg"):
        check_datamodule(PascalDataModule(root=str(root), img_size=32))


def test_layout_errors_become_check_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetCheckError, match="(?s)PROBLEM: fold 0 train: .*VOC2012/JPEGImages"):
        check_datamodule(PascalDataModule(root=str(tmp_path / "absent")))
    coco = make_coco(tmp_path / "coco", classes=(0, 1, 4, 5), n_train=8, n_val=8)  # nothing in folds 2, 3
    with pytest.raises(
        DatasetCheckError, match=r"(?s)fold 3: train: .*test: FAILED.*PROBLEM: fold 2 test: .*shot\+1"
    ):
        check_datamodule(COCO20iDataModule(root=str(coco)))


def test_command_line(roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "x.yaml"
    config.write_text(
        "model:\n  net: hsnet\n"
        "data:\n  class_path: fss.data.fss1000.FSS1000DataModule\n  init_args:\n    root: nowhere\n"
    )
    assert main(["check", "--config", str(config), "--data.root", str(roots["fss1000"])]) == 0
    assert "fold 0: train: 3 classes" in capsys.readouterr().out
    assert main(["check", "--config", str(config)]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "dataset"),
    [
        ("pascal_hsnet_fm.yaml", "pascal"),
        ("pascal_hsnet_hm.yaml", "pascal"),
        ("coco2pascal_hsnet_fm.yaml", "pascal"),
        ("coco2pascal_hsnet_hm.yaml", "pascal"),
        ("coco_hsnet_fm.yaml", "coco"),
        ("coco_hsnet_hm.yaml", "coco"),
        ("fss1000_hsnet_fm.yaml", "fss1000"),
        ("fss1000_hsnet_hm.yaml", "fss1000"),
    ],
)
def test_shipped_configs_build_their_data_module(
    config: str, dataset: str, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the configs say fss.data.<Name>; make sure the names resolve even before fss/data/__init__.py exports them
    for cls in (PascalDataModule, COCO20iDataModule, FSS1000DataModule):
        monkeypatch.setattr(fss.data, cls.__name__, cls, raising=False)
    overrides = ["--data.root", str(roots[dataset]), "--data.img_size", "32", "--data.num_workers", "0"]
    dm = load_datamodule(REPO / "configs" / config, overrides)
    assert dm.img_size == 32 and dm.shot == 1
    dm.setup("test")
    assert len(dm.datasets["test"]) > 0
    if config.startswith("coco2pascal"):
        assert dm.class_split == "coco2pascal" and dm.eval_class_ids == [0, 3, 8, 10, 11, 14]
