"""``fss data check``: per-fold report, every broken file with a count, --fix-lists, the shipped configs' data sections."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    assert "files: 80 images and masks decoded" in report  # 40 jpg + 40 png, each checked once

    report = check_datamodule(FSS1000DataModule(root=str(roots["fss1000"]), img_size=32))
    assert "train: 3 classes, 9 images" in report and "test: 1 classes, 3 images, 3 episodes" in report
    report = check_datamodule(
        COCO20iDataModule(root=str(roots["coco"]), mask_source="json"), verify_files=False
    )
    assert "fold 3: train" in report and "files:" not in report


def _truncate(path: Path) -> None:
    """Cut a JPEG in the middle of its entropy-coded data: the header stays valid."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def test_every_problem_is_listed_with_its_file_and_a_count(tmp_path: Path) -> None:
    root = make_pascal(tmp_path, n_train=20, n_val=20)
    PascalDataModule(root=str(root), img_size=32).setup(None)  # builds and caches the episode lists
    voc = root / "VOC2012"
    mask = voc / "SegmentationClassAug" / "2008_000003.png"
    mask.rename(tmp_path / "kept.png")
    (voc / "JPEGImages" / "2007_000001.jpg").write_bytes(b"garbage")
    _truncate(voc / "JPEGImages" / "2007_000002.jpg")  # PIL's header check (verify) passes on it
    small = voc / "SegmentationClassAug" / "2007_000004.png"
    Image.open(small).resize((20, 24), Image.NEAREST).save(small)  # the image is 48x40
    with pytest.raises(DatasetCheckError) as info:
        check_datamodule(PascalDataModule(root=str(root), img_size=32))
    text = str(info.value)
    assert "4 problem(s):" in text and text.count("PROBLEM:") == 4, text
    assert re.search(r"PROBLEM: missing file .*2008_000003\.png", text)
    assert re.search(r"PROBLEM: unreadable file .*2007_000001\.jpg", text)
    assert re.search(r"PROBLEM: unreadable file .*2007_000002\.jpg: .*truncated", text)
    assert re.search(
        r"PROBLEM: mask .*2007_000004\.png is 20x24 but its image .*2007_000004\.jpg is 48x40", text
    )
    assert "--fix-lists" in text


def test_fix_lists_leaves_broken_files_out_of_the_episodes(tmp_path: Path) -> None:
    root = make_pascal(tmp_path, n_train=40, n_val=20)  # 40: every class keeps 3 training images
    broken = root / "VOC2012" / "JPEGImages" / "2008_000005.jpg"  # a training image (val holds 2007_*)
    _truncate(broken)
    dm = PascalDataModule(root=str(root), img_size=32, fold=0)
    dm.setup("fit")
    names = {name for name, _ in dm.datasets["train"].pairs}
    assert "2008_000005" in names
    report = check_datamodule(PascalDataModule(root=str(root), img_size=32), fix_lists=True)
    assert "left out 1 file(s)" in report and report.endswith("OK (after leaving the broken files out)")
    assert "fixed: unreadable file" in report
    dm = PascalDataModule(root=str(root), img_size=32, fold=0)
    dm.setup("fit")
    train = dm.datasets["train"]
    assert {name for name, _ in train.pairs} == names - {"2008_000005"}
    for index in range(len(train)):  # no episode reads the broken file any more
        train.episode(index)
    assert "OK" in check_datamodule(PascalDataModule(root=str(root), img_size=32)).splitlines()[-1]


def test_empty_folder_dataset_masks_are_reported(tmp_path: Path) -> None:
    root = make_fss1000(tmp_path / "fss", n_classes=5, n_images=3)
    mask = next(root.rglob("*.png"))
    Image.fromarray(np.zeros((32, 32), np.uint8)).resize(Image.open(mask).size).save(mask)
    with pytest.raises(DatasetCheckError, match=r"(?s)1 problem\(s\):.*PROBLEM: mask .* is empty"):
        check_datamodule(FSS1000DataModule(root=str(root), img_size=32))


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
    # option names are never abbreviated: --fix is not --fix-lists
    assert main(["check", "--config", str(config), "--data.root", str(roots["fss1000"]), "--fix"]) == 1
    assert "--fix" in capsys.readouterr().err


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
