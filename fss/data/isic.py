"""ISIC2018 skin lesions (dermoscopy, 3 classes) as a cross-domain target (PATNet protocol).

Layout under ``root`` (or ``root/ISIC``), as PATNet's loader reads it and ``fss data prepare isic``
writes it::

    ISIC/ISIC2018_Task1-2_Training_Input/<k>/<id>.jpg            images of class k (k = 1, 2, 3)
    ISIC/ISIC2018_Task1_Training_GroundTruth/<id>_segmentation.png   the lesion mask (0/255)

The 2594 images of the ISIC 2018 task 1 training set, grouped by diagnosis. Folders 1, 2, 3 hold
seborrheic keratosis, nevus and melanoma (208, 1867 and 519 images), the numbering of the public
PATNet-based preparation scripts; PATNet's own code names the folders only by number. Class ids are
``k - 1``.

Protocol (PATNet ``test.py``): 600 episodes, class ``index % 3``, 400 px, seed 0; ``episode_order:
reference`` gives its exact sequence (see :mod:`fss.data.target`).

Preparation (:func:`prepare_isic`): the download's ``ISIC2018_Task1-2_Training_Input/`` and
``ISIC2018_Task1_Training_GroundTruth/`` plus a CSV of each image's diagnosis: either ``ID,Class``
rows with ``nevus`` / ``melanoma`` / ``seborrheic_keratosis`` (PATNet's ``data/isic/class_id.csv``)
or the ISIC 2017 part-3 ground truth (``image_id,melanoma,seborrheic_keratosis``, nevus when both
are 0). Images are copied unchanged into their class folder, masks into the ground-truth folder.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from fss.data.target import TargetDataModule, TargetDataset

#: the diagnosis of class folders 1, 2, 3
ISIC_CLASS_ORDER: tuple[str, ...] = ("seborrheic_keratosis", "nevus", "melanoma")
IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"

LAYOUT = f"""  <root>/ISIC/{IMAGE_DIR}/<k>/<id>.jpg          (k = 1, 2, 3)
  <root>/ISIC/{MASK_DIR}/<id>_segmentation.png
  (build it from the official download: fss data prepare isic --src DOWNLOAD --dst <root>)"""


class ISICDataset(TargetDataset):
    """ISIC2018 episodes (see the module docstring)."""

    num_classes: ClassVar[int] = len(ISIC_CLASS_ORDER)
    class_names: ClassVar[tuple[str, ...]] = ISIC_CLASS_ORDER
    display_name = "ISIC2018"
    default_episodes: ClassVar[int] = 600
    LAYOUT: ClassVar[str] = LAYOUT

    def find_root(self, root: Path) -> Path:
        for candidate in (root / "ISIC", root):
            if (candidate / IMAGE_DIR).is_dir():
                if not (candidate / MASK_DIR).is_dir():
                    raise self.layout_error(f"mask folder {candidate / MASK_DIR} is missing")
                return candidate
        raise self.layout_error(f"no ISIC folder at {root} (no {IMAGE_DIR} under it)")

    def list_items(self, class_id: int) -> list[str]:
        folder = self.root / IMAGE_DIR / str(class_id + 1)
        if not folder.is_dir():
            raise self.layout_error(f"class folder {folder} is missing")
        names = sorted(p.name for p in folder.iterdir() if p.name.split(".")[1:2] == ["jpg"])
        return [f"{class_id + 1}/{name.split('.')[0]}" for name in names]

    def item_name(self, item: str) -> str:
        return item

    def item_files(self, item: str) -> list[Path]:
        folder, stem = item.split("/")
        return [
            self.root / IMAGE_DIR / folder / f"{stem}.jpg",
            self.root / MASK_DIR / f"{stem}_segmentation.png",
        ]


class ISICDataModule(TargetDataModule):
    """ISIC2018 (3 lesion classes), test-only, PATNet protocol: 600 episodes at 400 px.

    Args:
        root: the folder holding ``ISIC/`` (or that folder); see :mod:`fss.data.isic`.
        **kwargs: ``episode_order`` and the shared options (:class:`~fss.data.target.TargetDataModule`).
    """

    dataset_class = ISICDataset

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)


# ------------------------------------------------------------------------------------------ preparation
def read_classes(path: Path) -> dict[str, str]:
    """``{image id: diagnosis}`` from an ``ID,Class`` CSV or an ISIC 2017 part-3 ground-truth CSV."""
    from fss.data.prepare import PrepareError

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise PrepareError(f"class CSV {path} is empty")
    header = set(rows[0])
    if {"ID", "Class"} <= header:
        return {row["ID"].strip(): row["Class"].strip() for row in rows}
    if {"image_id", "melanoma", "seborrheic_keratosis"} <= header:
        classes = {}
        for row in rows:
            mel, sk = float(row["melanoma"]), float(row["seborrheic_keratosis"])
            classes[row["image_id"].strip()] = (
                "melanoma" if mel else "seborrheic_keratosis" if sk else "nevus"
            )
        return classes
    raise PrepareError(
        f"class CSV {path} has columns {sorted(header)}: expected ID,Class or "
        "image_id,melanoma,seborrheic_keratosis"
    )


def prepare_isic(
    src: Path, dst: Path, classes: Path | None = None, class_order: Sequence[str] = ISIC_CLASS_ORDER
) -> dict[str, int]:
    """Group the ISIC 2018 task 1 images by diagnosis into ``dst/ISIC`` (see the module docstring).

    Args:
        src: folder holding ``ISIC2018_Task1-2_Training_Input/`` and ``ISIC2018_Task1_Training_GroundTruth/``.
        dst: the data root (gets ``ISIC/``).
        classes: the class CSV (default: the only ``*.csv`` directly in ``src``).
        class_order: the diagnoses of folders 1, 2, 3.

    Returns:
        images per class folder, and ``"unlabelled"``: images of the download with no class in the CSV
        (not copied).
    """
    from fss.data.prepare import PrepareError, Progress, check_paths, copy_atomic, iter_files

    check_paths(src, dst)
    image_dir, mask_dir = src / IMAGE_DIR, src / MASK_DIR
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise PrepareError(
                f"{folder} not found: --src is the folder holding {IMAGE_DIR}/ and {MASK_DIR}/"
            )
    if classes is None:
        found = sorted(src.glob("*.csv"))
        if len(found) != 1:
            raise PrepareError(
                f"pass --classes CSV (the diagnosis of each image); found {len(found)} CSV files in {src}"
            )
        classes = found[0]
    if sorted(class_order) != sorted(ISIC_CLASS_ORDER):
        raise PrepareError(
            f"--class-order must name {', '.join(ISIC_CLASS_ORDER)} once each, got {class_order}"
        )
    folder_of = {name: str(k + 1) for k, name in enumerate(class_order)}
    diagnosis = read_classes(classes)
    unknown = sorted({c for c in diagnosis.values() if c not in folder_of})
    if unknown:
        raise PrepareError(f"class CSV {classes} has unknown classes {unknown}; expected {list(class_order)}")
    images = [p for p in iter_files(image_dir, (".jpg",)) if p.stem in diagnosis]
    unlabelled = sum(1 for p in iter_files(image_dir, (".jpg",))) - len(images)
    for image in images:
        mask = mask_dir / f"{image.stem}_segmentation.png"
        if not mask.is_file():
            raise PrepareError(f"image {image} has no mask {mask}")
    out = dst / "ISIC"

    def copy(image: Path) -> None:
        copy_atomic(image, out / IMAGE_DIR / folder_of[diagnosis[image.stem]] / image.name)
        copy_atomic(
            mask_dir / f"{image.stem}_segmentation.png", out / MASK_DIR / f"{image.stem}_segmentation.png"
        )

    Progress(dst, "isic").run(images, lambda p: p.name, copy, "isic images")
    counts = {name: sum(1 for p in images if diagnosis[p.stem] == name) for name in class_order}
    counts["unlabelled"] = unlabelled
    return counts
