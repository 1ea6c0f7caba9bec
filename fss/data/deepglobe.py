"""Deepglobe land cover (satellite images, 6 classes) as a cross-domain target (PATNet protocol).

Layout under ``root`` (or ``root/Deepglobe``), as PATNet's loader reads it and
``fss data prepare deepglobe`` writes it::

    Deepglobe/<k>/test/origin/<name>.jpg        a 408 x 408 patch holding class k (k = 1 .. 6)
    Deepglobe/<k>/test/groundtruth/<name>.png   its mask of class k (white = class k)

A patch holding several classes is in several class folders, each with that class's mask.

Classes (folder ``k`` is class id ``k - 1``): 1 agriculture, 2 urban, 3 rangeland, 4 forest, 5 water,
6 barren. PATNet's preprocessing matches the colours ``(0,255,255), (255,255,0), (255,0,255),
(0,255,0), (255,0,0), (255,255,255)`` against masks read with OpenCV, whose pixels are in BGR order:
in the official RGB colour code these are agriculture (255,255,0), urban (0,255,255), rangeland,
forest, water (0,0,255) and barren. "Unknown" (black) is no class.

Protocol (PATNet ``test.py``): 600 episodes, class ``index % 6``, 400 px, seed 0; ``episode_order:
reference`` gives its exact sequence (see :mod:`fss.data.target`).

Preparation from the official download (:func:`prepare_deepglobe`, PATNet's published recipe): each
2448 x 2448 training tile ``<id>_sat.jpg`` with its colour mask ``<id>_mask.png`` is cut into a
6 x 6 grid of patches; a patch is kept when its mask has more than one colour and its rarest colour
covers more than 4.8% of it; it is then written into the folder of every class present, with a
binary mask per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fss.data.common import DatasetLayoutError
from fss.data.target import TargetDataModule, TargetDataset

CLASS_NAMES: tuple[str, ...] = ("agriculture", "urban", "rangeland", "forest", "water", "barren")
#: RGB colour of each class in the official Deepglobe masks (class id order)
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 255),
)

LAYOUT = """  <root>/Deepglobe/<k>/test/origin/<name>.jpg       (k = 1 .. 6)
  <root>/Deepglobe/<k>/test/groundtruth/<name>.png
  (build it from the official download: fss data prepare deepglobe --src DOWNLOAD --dst <root>)"""

#: an item: (class folder, image stem)
DeepglobeItem = tuple[str, str]


class DeepglobeDataset(TargetDataset):
    """Deepglobe episodes (see the module docstring)."""

    num_classes: ClassVar[int] = len(CLASS_NAMES)
    class_names: ClassVar[tuple[str, ...]] = CLASS_NAMES
    display_name = "Deepglobe"
    default_episodes: ClassVar[int] = 600
    LAYOUT: ClassVar[str] = LAYOUT

    def find_root(self, root: Path) -> Path:
        for candidate in (root / "Deepglobe", root):
            if (candidate / "1" / "test" / "origin").is_dir():
                return candidate
        raise self.layout_error(f"no Deepglobe folder at {root} (no 1/test/origin under it)")

    def list_items(self, class_id: int) -> list[DeepglobeItem]:
        folder = self.root / str(class_id + 1) / "test" / "origin"
        if not folder.is_dir():
            raise self.layout_error(f"class folder {folder} is missing")
        # the reference keeps names whose text after the first dot is "jpg", sorted as strings
        names = sorted(p.name for p in folder.iterdir() if p.name.split(".")[1:2] == ["jpg"])
        return [(str(class_id + 1), name.split(".")[0]) for name in names]

    def item_name(self, item: DeepglobeItem) -> str:
        return f"{item[0]}/{item[1]}"

    def item_files(self, item: DeepglobeItem) -> list[Path]:
        base = self.root / item[0] / "test"
        return [base / "origin" / f"{item[1]}.jpg", base / "groundtruth" / f"{item[1]}.png"]


class DeepglobeDataModule(TargetDataModule):
    """Deepglobe (6 land-cover classes), test-only, PATNet protocol: 600 episodes at 400 px.

    Args:
        root: the folder holding ``Deepglobe/`` (or that folder); see :mod:`fss.data.deepglobe`.
        **kwargs: ``episode_order`` and the shared options (:class:`~fss.data.target.TargetDataModule`).
    """

    dataset_class = DeepglobeDataset

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)


# ------------------------------------------------------------------------------------------ preparation
def _tiles(src: Path) -> list[tuple[Path, Path]]:
    """(image, mask) of every tile of the download: ``<id>_sat.jpg`` with ``<id>_mask.png``."""
    from fss.data.prepare import PrepareError

    folder = src / "train" if (src / "train").is_dir() else src
    images = sorted(folder.glob("*_sat.jpg"))
    if not images:
        raise PrepareError(
            f"no <id>_sat.jpg tiles in {folder}: --src is the unpacked Deepglobe land cover download "
            "(its train/ folder holds <id>_sat.jpg and <id>_mask.png)"
        )
    tiles = []
    for image in images:
        mask = image.with_name(image.name.replace("_sat.jpg", "_mask.png"))
        if not mask.is_file():
            raise PrepareError(f"tile {image} has no mask {mask}")
        tiles.append((image, mask))
    return tiles


def colour_codes(mask_rgb: np.ndarray) -> np.ndarray:
    """One integer per pixel (R*65536 + G*256 + B) of a colour mask uint8 [H, W, 3], each channel
    thresholded at 128 first (the Deepglobe masks are not exactly 0/255, as its organisers note)."""
    bits = (mask_rgb >= 128).astype(np.int32) * 255
    return (bits[..., 0] << 16) | (bits[..., 1] << 8) | bits[..., 2]


def keep_patch(codes: np.ndarray, min_fraction: float) -> bool:
    """PATNet's filter: more than one colour, and the rarest colour covers more than ``min_fraction``."""
    _, counts = np.unique(codes, return_counts=True)
    return len(counts) > 1 and counts.min() / codes.size > min_fraction


def prepare_deepglobe(src: Path, dst: Path, grid: int = 6, min_fraction: float = 0.048) -> dict[str, int]:
    """Cut, filter and sort the Deepglobe training tiles into ``dst/Deepglobe`` (see the module docstring).

    Patch ``(i, j)`` (row, column) of tile ``<id>_sat.jpg`` covers rows ``int(i*H/grid) ..
    int((i+1)*H/grid)`` and the same for columns; it is saved as ``<id>_sat_<i><j>.jpg`` (JPEG quality
    95) and ``<id>_sat_<i><j>.png`` (0/255). Resumable; ``src`` is only read.

    Returns:
        ``{"tiles": n, "patches": kept patches, "class images": files per class summed}`` over the
        whole dataset (tiles done in an earlier run included).
    """
    from PIL import Image

    from fss.data.prepare import Progress, check_paths, save_image

    check_paths(src, dst)
    if grid < 1 or not 0 <= min_fraction < 1:
        raise DatasetLayoutError(f"grid must be >= 1 and min_fraction in [0, 1), got {grid}, {min_fraction}")
    tiles = _tiles(src)
    out = dst / "Deepglobe"
    progress = Progress(dst, "deepglobe")
    colours = [(r << 16) | (g << 8) | b for r, g, b in CLASS_COLOURS]

    def cut(tile: tuple[Path, Path]) -> None:
        image_path, mask_path = tile
        with Image.open(image_path) as img:
            image = img.convert("RGB")
        with Image.open(mask_path) as msk:
            codes = colour_codes(np.asarray(msk.convert("RGB")))
        height, width = codes.shape
        if image.size != (width, height):
            raise DatasetLayoutError(f"{image_path} is {image.size}, its mask {mask_path} {(width, height)}")
        stem = image_path.name[: -len(".jpg")]
        for i in range(grid):
            for j in range(grid):
                y0, y1 = int(i * height / grid), int((i + 1) * height / grid)
                x0, x1 = int(j * width / grid), int((j + 1) * width / grid)
                patch = codes[y0:y1, x0:x1]
                if not keep_patch(patch, min_fraction):
                    continue
                name = f"{stem}_{i}{j}"
                crop = image.crop((x0, y0, x1, y1))
                for k, colour in enumerate(colours):
                    binary = patch == colour
                    if not binary.any():
                        continue
                    base = out / str(k + 1) / "test"
                    save_image(crop, base / "origin" / f"{name}.jpg", quality=95)
                    save_image(
                        Image.fromarray(binary.astype(np.uint8) * 255), base / "groundtruth" / f"{name}.png"
                    )

    progress.run(tiles, lambda t: t[0].name, cut, "deepglobe tiles")
    counts = {"tiles": len(tiles)}
    patches: set[str] = set()
    files = 0
    for k in range(len(CLASS_NAMES)):
        folder = out / str(k + 1) / "test" / "origin"
        names = [p.stem for p in folder.glob("*.jpg")] if folder.is_dir() else []
        patches.update(names)
        files += len(names)
    counts["patches"] = len(patches)
    counts["class images"] = files
    return counts
