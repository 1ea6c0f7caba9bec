"""SUIM (underwater imagery, 8 categories) as a cross-domain target (the MMT protocol, CVPR 2022).

Layout under ``root`` (or ``root/SUIM``), the official download unpacked::

    SUIM/train_val/images/<name>.jpg    SUIM/train_val/masks/<name>.bmp
    SUIM/TEST/images/<name>.jpg         SUIM/TEST/masks/<name>.bmp

Masks are RGB images whose channels, each thresholded at 128, give a 3-bit colour code: the class id.

=====  ====  =======================================  ===================
id     code  category                                 in ``class_set``
=====  ====  =======================================  ===================
0      000   background (waterbody)                   never
1      001   human divers                             all
2      010   aquatic plants and sea-grass             all, target
3      011   wrecks and ruins                         all, target
4      100   robots (AUVs, ROVs, instruments)         all, target
5      101   reefs and invertebrates                  all, target
6      110   fish and vertebrates                     all
7      111   sea-floor and rocks                      all, target
=====  ====  =======================================  ===================

MMT (Wang et al., "Remember the Difference", CVPR 2022) tests models trained on COCO-20i or
PASCAL-5i folds on SUIM. fss's defaults, where the paper's text leaves the choice open (each one an
option):

* ``class_set: all``: the seven object categories (waterbody is background, never a class);
  ``class_set: target`` drops the two whose objects the source benchmarks label too (human divers:
  *person*; fish and vertebrates: PASCAL's and COCO's animals), so that source and target classes
  are disjoint;
* ``subsets: [train_val, TEST]``: every labelled image (a test-only target uses none for training);
* a class counts in an image when it covers at least ``min_fraction`` (1%) of it, so that stray
  boundary pixels make no episode;
* 1000 episodes (the PASCAL-5i / COCO-20i test count), class ``index % n``, 400 px.

The class index is computed once (reading every mask) and cached in ``<root>/.fss_cache`` (or the
user cache when the root is read-only). There is no ``patnet`` episode order (MMT's code is not
public).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fss.data.common import DatasetFileError, cache_dir, read_lines, write_lines
from fss.data.target import TargetDataModule, TargetDataset

CLASS_NAMES: tuple[str, ...] = (
    "waterbody",
    "human divers",
    "aquatic plants",
    "wrecks and ruins",
    "robots",
    "reefs and invertebrates",
    "fish and vertebrates",
    "sea-floor and rocks",
)
#: the test classes of each ``class_set``
CLASS_SETS: dict[str, tuple[int, ...]] = {"all": (1, 2, 3, 4, 5, 6, 7), "target": (2, 3, 4, 5, 7)}
SUBSETS: tuple[str, ...] = ("train_val", "TEST")
SuimClassSet = Literal["all", "target"]

LAYOUT = """  <root>/SUIM/train_val/images/<name>.jpg   <root>/SUIM/train_val/masks/<name>.bmp
  <root>/SUIM/TEST/images/<name>.jpg        <root>/SUIM/TEST/masks/<name>.bmp"""


def class_map(path: Path) -> np.ndarray:
    """The class id uint8 [H, W] of every pixel of a SUIM mask (channels thresholded at 128)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetFileError(f"mask file missing: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetFileError(f"cannot read mask {path}: {err} (re-extract or delete the file)") from err
    bits = (rgb >= 128).astype(np.uint8)
    return (bits[..., 0] << 2) | (bits[..., 1] << 1) | bits[..., 2]


class SUIMDataset(TargetDataset):
    """SUIM episodes (see the module docstring).

    Args:
        class_set: ``all`` or ``target``.
        subsets: the SUIM folders whose images are used.
        min_fraction: the smallest share of an image a class must cover to count there.
        root, split, episode_order and the rest: see :class:`~fss.data.target.TargetDataset`.
    """

    num_classes: ClassVar[int] = len(CLASS_NAMES)
    class_names: ClassVar[tuple[str, ...]] = CLASS_NAMES
    display_name = "SUIM"
    default_episodes: ClassVar[int] = 1000
    LAYOUT: ClassVar[str] = LAYOUT

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_set: SuimClassSet = "all",
        subsets: tuple[str, ...] | list[str] = SUBSETS,
        min_fraction: float = 0.01,
        **kwargs: Any,
    ) -> None:
        if class_set not in CLASS_SETS:
            raise ValueError(f"SUIM: class_set must be one of {list(CLASS_SETS)}, got {class_set!r}")
        bad = [s for s in subsets if s not in SUBSETS]
        if bad or not subsets:
            raise ValueError(
                f"SUIM: subsets must be a non-empty list of {list(SUBSETS)}, got {list(subsets)}"
            )
        if not 0 <= min_fraction < 1:
            raise ValueError(f"SUIM: min_fraction must be in [0, 1), got {min_fraction}")
        if kwargs.get("episode_order", "fss") != "fss":
            raise ValueError("SUIM: episode_order 'patnet' needs public reference code; MMT's is not")
        self.class_set = class_set
        self.subsets = tuple(subsets)
        self.min_fraction = min_fraction
        self._index: dict[int, list[str]] | None = None
        super().__init__(root, split, **kwargs)

    def split_class_ids(self, split: str, fold: int) -> list[int]:  # type: ignore[override]
        super().split_class_ids(split, fold)  # raises for train
        return list(CLASS_SETS[self.class_set])

    def find_root(self, root: Path) -> Path:
        for candidate in (root / "SUIM", root):
            if any((candidate / s / "masks").is_dir() for s in SUBSETS):
                for subset in self.subsets:
                    for sub in ("images", "masks"):
                        if not (candidate / subset / sub).is_dir():
                            raise self.layout_error(f"folder {candidate / subset / sub} is missing")
                return candidate
        raise self.layout_error(f"no SUIM folder at {root} (no train_val/masks or TEST/masks under it)")

    # ------------------------------------------------------------------ class index
    def mask_names(self) -> list[str]:
        """``<subset>/<stem>`` of every mask of the used subsets, sorted."""
        return sorted(
            f"{subset}/{p.stem}"
            for subset in self.subsets
            for p in (self.root / subset / "masks").iterdir()
            if p.suffix.lower() == ".bmp"
        )

    def class_index(self) -> dict[int, list[str]]:
        """``{class id: items}`` for all 8 ids (read from every mask once, then from the cache)."""
        if self._index is not None:
            return self._index
        names = self.mask_names()
        key = hashlib.sha1(f"{self.min_fraction}|{'|'.join(names)}".encode()).hexdigest()[:12]
        cache = cache_dir(self.root) / f"suim_classes_{key}.txt"
        if cache.is_file():
            lines = read_lines(cache)
        else:
            lines = []
            for name in names:
                codes = class_map(self.item_files(name)[1])
                counts = np.bincount(codes.ravel(), minlength=len(CLASS_NAMES))
                present = [c for c in range(len(CLASS_NAMES)) if counts[c] >= self.min_fraction * codes.size]
                lines.append(" ".join([name, *map(str, present)]))
            write_lines(cache, lines)
        index: dict[int, list[str]] = {c: [] for c in range(len(CLASS_NAMES))}
        for line in lines:
            name, *classes = line.split()
            for c in classes:
                index[int(c)].append(name)
        self._index = index
        return index

    def list_items(self, class_id: int) -> list[str]:
        return self.class_index()[class_id]

    # ------------------------------------------------------------------ files
    def item_name(self, item: str) -> str:
        return item

    def item_files(self, item: str) -> list[Path]:
        subset, stem = item.split("/")
        return [self.root / subset / "images" / f"{stem}.jpg", self.root / subset / "masks" / f"{stem}.bmp"]

    def load_target(self, item: str, class_id: int, query: bool) -> np.ndarray:
        return (class_map(self.item_files(item)[1]) == class_id).astype(np.uint8)


class SUIMDataModule(TargetDataModule):
    """SUIM (underwater, 7 object categories), test-only, MMT protocol: 1000 episodes at 400 px.

    Args:
        root: the folder holding ``SUIM/`` (or that folder); see :mod:`fss.data.suim`.
        class_set: ``all`` (the seven object categories) or ``target`` (without human divers and fish,
            which the source benchmarks label too).
        subsets: the SUIM folders whose images are used (``train_val``, ``TEST``).
        min_fraction: a class counts in an image when it covers at least this share of it.
        **kwargs: the shared options (:class:`~fss.data.target.TargetDataModule`; ``episode_order``
            is ``fss``: MMT's code is not public).
    """

    dataset_class = SUIMDataset

    def __init__(
        self,
        root: str,
        class_set: SuimClassSet = "all",
        subsets: list[str] | None = None,
        min_fraction: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if class_set not in CLASS_SETS:
            raise ValueError(
                f"SUIMDataModule: data.class_set must be one of {list(CLASS_SETS)}, got {class_set!r}"
            )
        if self.episode_order == "patnet":
            raise ValueError(
                "SUIMDataModule: data.episode_order 'patnet' needs public reference code; MMT's is not"
            )
        self.class_set = class_set
        self.subsets = list(subsets) if subsets is not None else list(SUBSETS)
        self.min_fraction = min_fraction

    @property
    def eval_class_ids(self) -> list[int]:
        return list(CLASS_SETS[self.class_set])

    def dataset_kwargs(self) -> dict[str, Any]:
        return {
            **super().dataset_kwargs(),
            "class_set": self.class_set,
            "subsets": self.subsets,
            "min_fraction": self.min_fraction,
        }
