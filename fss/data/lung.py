"""Chest X-ray lung segmentation (greyscale radiographs, 1 class) as a cross-domain target (PATNet protocol).

Layout under ``root`` (or ``root/LungSegmentation``), the "Chest X-ray masks and labels" download as
PATNet's loader reads it (no preparation needed)::

    LungSegmentation/CXR_png/<name>.png          the radiograph (greyscale; read as RGB)
    LungSegmentation/masks/<name>_mask.png       its lung mask (0/255)

Every mask is an episode item (sorted by name, as the reference lists them); its image is the mask's
name without ``_mask``. Masks named like their image (``<name>.png``, as the Montgomery masks of
some copies are) are accepted too; PATNet's loader strips 9 characters and fails on those, so the
``patnet`` order matches PATNet only on a folder of ``_mask`` names. One class, ``lung``.

Protocol (PATNet ``test.py``): 600 episodes, 400 px, seed 0; ``episode_order: patnet`` gives its
exact sequence (see :mod:`fss.data.target`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from fss.data.target import TargetDataModule, TargetDataset

IMAGE_DIR = "CXR_png"
MASK_DIR = "masks"
LAYOUT = f"""  <root>/LungSegmentation/{IMAGE_DIR}/<name>.png
  <root>/LungSegmentation/{MASK_DIR}/<name>_mask.png"""


def image_stem(mask_name: str) -> str:
    """The radiograph's stem of a mask file name: ``CHNCXR_0001_0_mask.png`` -> ``CHNCXR_0001_0``."""
    stem = mask_name.split(".")[0]
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


class LungDataset(TargetDataset):
    """Chest X-ray episodes (see the module docstring)."""

    num_classes: ClassVar[int] = 1
    class_names: ClassVar[tuple[str, ...]] = ("lung",)
    display_name = "Chest X-ray"
    default_episodes: ClassVar[int] = 600
    LAYOUT: ClassVar[str] = LAYOUT

    def find_root(self, root: Path) -> Path:
        for candidate in (root / "LungSegmentation", root):
            if (candidate / MASK_DIR).is_dir():
                if not (candidate / IMAGE_DIR).is_dir():
                    raise self.layout_error(f"image folder {candidate / IMAGE_DIR} is missing")
                return candidate
        raise self.layout_error(f"no LungSegmentation folder at {root} (no {MASK_DIR}/ under it)")

    def list_items(self, class_id: int) -> list[str]:
        folder = self.root / MASK_DIR
        return sorted(p.name for p in folder.iterdir() if p.name.split(".")[1:2] == ["png"])

    def item_name(self, item: str) -> str:
        return image_stem(item)

    def item_files(self, item: str) -> list[Path]:
        return [self.root / IMAGE_DIR / f"{image_stem(item)}.png", self.root / MASK_DIR / item]


class LungDataModule(TargetDataModule):
    """Chest X-ray lungs (1 class), test-only, PATNet protocol: 600 episodes at 400 px.

    Args:
        root: the folder holding ``LungSegmentation/`` (or that folder); see :mod:`fss.data.lung`.
        **kwargs: ``episode_order`` and the shared options (:class:`~fss.data.target.TargetDataModule`).
    """

    dataset_class = LungDataset

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
