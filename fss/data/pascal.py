"""PASCAL-5i (and the COCO-20i -> PASCAL cross-domain test split).

Layout under ``root`` (``root`` may also be the ``VOC2012`` folder itself)::

    VOC2012/JPEGImages/<name>.jpg
    VOC2012/SegmentationClassAug/<name>.png        values 0 (background), 1..20 (classes), 255 (boundaries)
    VOC2012/ImageSets/Segmentation/val.txt         only needed without data.split_dir

Folds: fold ``i`` holds the 1-based classes ``5i+1 .. 5i+5``; val/test episodes use fold ``i``'s classes
on the VOC2012 *val* images, training episodes the other 15 classes on the SBD-augmented *train* images.
Query masks are 1 on the class, 0 elsewhere and 255 on VOC's boundary pixels (ignored by loss and
metric); support masks are 1 on the class and 0 elsewhere (boundary pixels -> 0).

Episode lists (which (image, class) pairs exist):

* ``split_dir`` given: the widely used lists ``<split_dir>/{trn,val}/fold{i}.txt``, one ``<image>__<cc>``
  per line, ``cc`` the 1-based class (the OSLSM/PANet/HSNet files). Training reads the ``trn`` lists of
  the three other folds, val/test the ``val`` list of the fold (in file order).
* otherwise the lists are generated once from the masks and cached in ``VOC2012/.fss_cache`` (or a user
  cache directory when the root is read-only), in the same format: every (image, class) pair whose
  mask has at least ``max(1, min_fg_pixels)`` pixels of the class. The val images are those of
  ``VOC2012/ImageSets/Segmentation/val.txt`` (1449 images); the train images are all other masks of
  ``SegmentationClassAug`` (the SBD-aug convention, 10582 images; VOC's own ``train.txt`` is not used).
  The published lists hold fewer pairs, so published numbers need ``split_dir``;
  a warning says when a generated list is used. Delete the cache folder after changing the masks.

Episodes: the query of episode ``index`` is list entry ``index % len(list)`` (the reference rule; for a
list longer than the episode count the entries ``index * len // num_episodes`` spread over the list),
the ``shot`` supports are distinct other images of the class drawn with the episode generator.
Val/test: 1000 episodes per fold by default; training: one epoch = ``len(list)`` episodes.

Cross-domain (``class_split: coco2pascal``): test-only; fold ``i``'s classes are the PASCAL classes
whose COCO counterpart lies in COCO-20i's interleaved fold ``i``, over the pairs of all four val lists.

Cross-domain source (``class_split: all``, PATNet's ``--fold 4``): training episodes use all 20 classes
over the ``trn`` lists of all four folds; val/test all 20 classes over all four ``val`` lists (``fold``
is ignored). PATNet selects its checkpoint on FSS-1000's val classes instead; here validation stays
on PASCAL.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fss.data.base import contiguous_fold_class_ids
from fss.data.common import (
    PFENET_MIN_FG_PIXELS,
    Boundary,
    DatasetLayoutError,
    FileDataModule,
    ImageEpisodeDataset,
    Protocol,
    cache_dir,
    query_position,
    read_image,
    read_label,
    read_lines,
    write_lines,
)
from fss.data.episode import IGNORE_INDEX

log = logging.getLogger(__name__)

PASCAL_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

#: the 1-based COCO class index (in COCO's category order) of each PASCAL class
PASCAL_TO_COCO: tuple[int, ...] = (5, 2, 15, 9, 40, 6, 3, 16, 57, 20, 61, 17, 18, 4, 1, 59, 19, 58, 7, 63)

PascalClassSplit = Literal["standard", "coco2pascal", "all"]

LAYOUT = """  <root>/VOC2012/JPEGImages/<name>.jpg
  <root>/VOC2012/SegmentationClassAug/<name>.png   (class index per pixel, 255 on boundaries)
  <root>/VOC2012/ImageSets/Segmentation/val.txt    (or pass data.split_dir with {trn,val}/fold{i}.txt)"""

_LIST_SPLIT = {"train": "trn", "val": "val", "test": "val"}


def coco2pascal_class_ids(fold: int) -> list[int]:
    """PASCAL class ids (0-based) whose COCO class lies in COCO-20i's interleaved fold ``fold``."""
    if not 0 <= fold < 4:
        raise ValueError(f"fold must be in [0, 4), got {fold}")
    return [p for p, c in enumerate(PASCAL_TO_COCO) if (c - 1) % 4 == fold]


def pascal_class_ids(split: str, fold: int, class_split: PascalClassSplit) -> list[int]:
    """The classes of ``split`` for ``fold`` under ``class_split`` (``standard``, ``coco2pascal``, ``all``)."""
    if class_split == "all":
        return list(range(20))
    if class_split == "standard":
        held_out = contiguous_fold_class_ids(20, 4, fold)
        return [c for c in range(20) if c not in held_out] if split == "train" else held_out
    if class_split == "coco2pascal":
        if split == "train":
            raise ValueError(
                "data.class_split=coco2pascal is a test split (train on COCO-20i: "
                "fss fit --config configs/coco_hsnet_hm.yaml --data.fold i)"
            )
        return coco2pascal_class_ids(fold)
    raise ValueError(f"data.class_split must be 'standard', 'coco2pascal' or 'all', got {class_split!r}")


def resolve_voc_root(root: str | Path) -> Path:
    """The ``VOC2012`` folder under ``root`` (or ``root`` itself); raise naming the layout otherwise."""
    root = Path(root).expanduser()
    for voc in (root / "VOC2012", root):
        if (voc / "JPEGImages").is_dir() and (voc / "SegmentationClassAug").is_dir():
            return voc
    if not root.exists():
        raise DatasetLayoutError(f"PASCAL-5i root {root} does not exist. Expected layout:\n{LAYOUT}")
    raise DatasetLayoutError(
        f"PASCAL-5i root {root} lacks VOC2012/JPEGImages or VOC2012/SegmentationClassAug "
        f"(data.root must be the folder that contains VOC2012). Expected layout:\n{LAYOUT}"
    )


def parse_pair_list(path: Path) -> list[tuple[str, int]]:
    """Read an ``<image>__<cc>`` list (``cc`` 1-based, 1..20) into (image, 0-based class) pairs."""
    if not path.is_file():
        raise DatasetLayoutError(
            f"episode list {path} not found: data.split_dir must hold trn/fold0..3.txt and val/fold0..3.txt"
        )
    pairs = []
    for n, line in enumerate(read_lines(path), start=1):
        name, sep, cls = line.rpartition("__")
        if not sep or not cls.isdigit() or not 1 <= int(cls) <= 20:
            raise ValueError(f"{path}:{n}: expected '<image>__<class 01..20>', got {line!r}")
        pairs.append((name, int(cls) - 1))
    return pairs


def generate_pair_lists(voc: Path, list_split: str, min_fg_pixels: int, out: dict[int, Path]) -> None:
    """Write the ``list_split`` (``trn``/``val``) pair lists of all four folds to ``out[fold]``."""
    val_txt = voc / "ImageSets" / "Segmentation" / "val.txt"
    if not val_txt.is_file():
        raise DatasetLayoutError(
            f"{val_txt} not found: it names PASCAL's val images, which generated episode lists need. "
            "Restore it from the VOC2012 tarball, or pass data.split_dir with the standard lists "
            "({trn,val}/fold{i}.txt)."
        )
    masks = sorted(p.stem for p in (voc / "SegmentationClassAug").glob("*.png"))
    val = set(read_lines(val_txt))
    names = [m for m in masks if (m in val) == (list_split == "val")]
    log.warning(
        "PASCAL-5i: generating %s episode lists from %d masks in %s (once; cached in %s). Published "
        "numbers use the standard lists: pass data.split_dir to use them.",
        list_split,
        len(names),
        voc / "SegmentationClassAug",
        out[0].parent,
    )
    threshold = max(1, min_fg_pixels)
    lines: dict[int, list[str]] = {fold: [] for fold in range(4)}
    for name in names:
        counts = np.bincount(read_label(voc / "SegmentationClassAug" / f"{name}.png").ravel(), minlength=256)
        for c in range(20):
            if counts[c + 1] >= threshold:
                lines[c // 5].append(f"{name}__{c + 1:02d}")
    for fold, path in out.items():
        write_lines(path, lines[fold])


def image_classes(voc: Path, names: list[str], cache: Path) -> dict[str, set[int]]:
    """The 0-based classes with at least one pixel in each mask of ``names`` (cached in ``cache``)."""
    if cache.is_file():
        known = {line.split()[0]: {int(c) for c in line.split()[1:]} for line in read_lines(cache)}
        if all(n in known for n in names):
            return known
    found = {}
    for name in names:
        counts = np.bincount(read_label(voc / "SegmentationClassAug" / f"{name}.png").ravel(), minlength=256)
        found[name] = {c for c in range(20) if counts[c + 1]}
    write_lines(cache, [" ".join([n, *map(str, sorted(cs))]) for n, cs in found.items()])
    return found


class Pascal5iDataset(ImageEpisodeDataset):
    """PASCAL-5i episodes of one split and fold (see the module docstring for the protocol).

    Args:
        root: folder containing ``VOC2012`` (or the ``VOC2012`` folder).
        split, fold, shot, num_episodes, seed, img_size, use_original_imgsize: see
            :class:`~fss.data.base.EpisodicDataset`.
        split_dir: folder with the standard lists ``{trn,val}/fold{i}.txt``; ``None`` generates them.
        class_split: ``standard`` (PASCAL-5i folds) or ``coco2pascal`` (cross-domain test classes).
        min_fg_pixels: generated lists keep pairs with at least this many class pixels (``pfenet``:
            at least 2048 = 2 x 32 x 32, PFENet's rule).
        protocol: ``hsnet`` or ``pfenet`` (:class:`PascalDataModule`).
        **kwargs: the options of :class:`~fss.data.common.ImageEpisodeDataset` (augmentation, resizing,
            episode order, boundary pixels, validation part).
    """

    num_classes: ClassVar[int] = 20
    class_names: ClassVar[tuple[str, ...]] = PASCAL_CLASSES
    num_folds: ClassVar[int] = 4
    display_name = "PASCAL-5i"
    #: HSNet (and ASNet, VAT) score val/test with boundaries ignored but train on them as background
    reference_boundary: ClassVar[dict[str, Boundary]] = {"train": "background", "eval": "ignore"}

    def __init__(
        self,
        root: str | Path,
        split: str,
        fold: int = 0,
        shot: int = 1,
        num_episodes: int | None = 1000,
        seed: int = 0,
        img_size: int = 400,
        use_original_imgsize: bool = False,
        split_dir: str | Path | None = None,
        class_split: PascalClassSplit = "standard",
        min_fg_pixels: int = 0,
        protocol: Protocol = "hsnet",
        **kwargs: Any,
    ) -> None:
        self.class_split = class_split
        if protocol == "pfenet":
            min_fg_pixels = max(min_fg_pixels, PFENET_MIN_FG_PIXELS)
        super().__init__(
            split=split,
            fold=fold,
            shot=shot,
            num_episodes=num_episodes,
            seed=seed,
            img_size=img_size,
            use_original_imgsize=use_original_imgsize,
            protocol=protocol,
            **kwargs,
        )
        self.voc = resolve_voc_root(root)
        self.split_dir = Path(split_dir).expanduser() if split_dir is not None else None
        self.min_fg_pixels = min_fg_pixels
        wanted = set(self.class_ids)
        pairs = [p for p in self._read_pairs() if p[1] in wanted]
        if protocol == "pfenet" and split == "train":  # PFENet: no training image shows a novel class
            names = sorted({name for name, _ in pairs})
            present = image_classes(self.voc, names, cache_dir(self.voc) / "pascal_trn_classes.txt")
            novel = set(pascal_class_ids("val", fold, class_split))
            pairs = [(name, c) for name, c in pairs if not present[name] & novel]
        if self.class_split == "coco2pascal":
            pairs = sorted(set(pairs))
        for name, c in dict.fromkeys(pairs):
            self.class_items.setdefault(c, []).append(name)
        self.finalize_classes()
        kept = {(name, c) for c in self.usable_class_ids for name in self.class_items[c]}
        self.pairs: list[tuple[str, int]] = [p for p in pairs if p in kept]

    def split_class_ids(self, split: str, fold: int) -> list[int]:  # type: ignore[override]
        return pascal_class_ids(split, fold, self.class_split)

    # ------------------------------------------------------------------ episode lists
    def _list_folds(self) -> list[int]:
        if self.class_split in ("coco2pascal", "all"):
            return [0, 1, 2, 3]
        return [f for f in range(4) if f != self.fold] if self.split == "train" else [self.fold]

    def list_paths(self) -> list[Path]:
        """The pair lists this split reads (generated and cached on first use without ``split_dir``)."""
        list_split = _LIST_SPLIT[self.split]
        if self.split_dir is not None:
            return [self.split_dir / list_split / f"fold{f}.txt" for f in self._list_folds()]
        suffix = f"_min{self.min_fg_pixels}" if self.min_fg_pixels > 1 else ""
        cache = cache_dir(self.voc)
        paths = {f: cache / f"pascal_{list_split}_fold{f}{suffix}.txt" for f in range(4)}
        if not all(p.is_file() for p in paths.values()):
            generate_pair_lists(self.voc, list_split, self.min_fg_pixels, paths)
        else:
            log.warning(
                "PASCAL-5i: using generated %s episode lists from %s (published numbers use the standard "
                "lists: data.split_dir)",
                list_split,
                cache,
            )
        return [paths[f] for f in self._list_folds()]

    def _read_pairs(self) -> list[tuple[str, int]]:
        return [pair for path in self.list_paths() for pair in parse_pair_list(path)]

    def default_num_episodes(self) -> int:
        return len(self.pairs) if self.split == "train" else 1000

    # ------------------------------------------------------------------ items
    def pick_query(self, rng: np.random.Generator, index: int) -> tuple[str, int]:
        return self.pairs[query_position(index, self.num_episodes, len(self.pairs))]

    def reference_query(self, rs: np.random.RandomState, index: int) -> tuple[str, int]:
        return self.pairs[index % len(self.pairs)]  # HSNet: idx %= len(list); nothing drawn

    def image_path(self, name: str) -> Path:
        return self.voc / "JPEGImages" / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        return self.voc / "SegmentationClassAug" / f"{name}.png"

    def load_image(self, item: str) -> np.ndarray:
        return read_image(self.image_path(item))

    def load_target(self, item: str, class_id: int, query: bool) -> np.ndarray:
        label = read_label(self.mask_path(item))
        target = (label == class_id + 1).astype(np.uint8)
        if self.ignores_boundary():
            target[label == IGNORE_INDEX] = IGNORE_INDEX
        return target

    def load_class_map(self, item: str) -> np.ndarray:
        return read_label(self.mask_path(item))  # SegmentationClassAug: 0, class + 1, 255

    def gfss_index(self) -> tuple[list[str], dict[int, list[str]]]:
        """BAM's GFSS lists: every image of ``ImageSets/Segmentation/val.txt`` in file order (the
        reference's ``lists/pascal/val.txt``), and per held-out class the images showing it (any size)."""
        if self.split == "train":
            raise ValueError("PASCAL-5i: GFSS episodes are test episodes")
        val_txt = self.voc / "ImageSets" / "Segmentation" / "val.txt"
        if not val_txt.is_file():
            raise DatasetLayoutError(
                f"{val_txt} not found: GFSS episodes (data.gfss) query every PASCAL val image in its order. "
                "Restore it from the VOC2012 tarball."
            )
        names = list(dict.fromkeys(read_lines(val_txt)))
        present = image_classes(self.voc, names, cache_dir(self.voc) / "pascal_val_classes.txt")
        pools = {c: [n for n in names if c in present[n]] for c in self.class_ids}
        return names, pools

    def item_name(self, item: str) -> str:
        return item

    def item_files(self, item: str) -> list[Path]:
        return [self.image_path(item), self.mask_path(item)]


class PascalDataModule(FileDataModule):
    """PASCAL-5i episodes (``class_split: coco2pascal`` for the COCO -> PASCAL cross-domain test).

    Args:
        root: folder containing ``VOC2012`` (JPEGImages, SegmentationClassAug, ImageSets).
        split_dir: folder with the standard lists ``{trn,val}/fold{i}.txt`` (``<image>__<cc>`` lines);
            ``null`` generates lists from the masks (cached, with a warning).
        class_split: ``standard``, ``coco2pascal`` (test-only cross-domain classes) or ``all`` (every
            class in every split: the source of the PATNet cross-domain protocol).
        min_fg_pixels: generated lists keep (image, class) pairs with at least this many class pixels.
        protocol: ``hsnet`` (HSNet's: resize to ``img_size`` square, the lists as given) or ``pfenet``
            (PFENet/BAM/NTRENet's: training crops of ``img_size`` (473) with PFENet's augmentation,
            evaluation images resized with their aspect kept and padded, the prediction scored on the
            original label (with ``use_original_imgsize``), lists with at least 2048 class pixels per
            pair and no training image that shows a held-out class). See docs/models.md.
        **kwargs: the augmentation options of :class:`~fss.data.common.FileDataModule` and the shared
            episode options of :class:`~fss.data.base.EpisodicDataModule` (fold 0..3; episode counts
            ``null``: one pass over the training pairs, 1000 val/test episodes).
    """

    dataset_class = Pascal5iDataset

    def __init__(
        self,
        root: str,
        split_dir: str | None = None,
        class_split: PascalClassSplit = "standard",
        min_fg_pixels: int = 0,
        protocol: Protocol = "hsnet",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if protocol not in ("hsnet", "pfenet"):
            raise ValueError(f"data.protocol must be 'hsnet' or 'pfenet', got {protocol!r}")
        self.protocol: Protocol = protocol
        if class_split not in ("standard", "coco2pascal", "all"):
            raise ValueError(
                f"data.class_split must be 'standard', 'coco2pascal' or 'all', got {class_split!r}"
            )
        if min_fg_pixels < 0:
            raise ValueError(f"data.min_fg_pixels must be >= 0, got {min_fg_pixels}")
        self.root = root
        self.split_dir = split_dir
        self.class_split: PascalClassSplit = class_split
        self.min_fg_pixels = min_fg_pixels

    @property
    def eval_class_ids(self) -> list[int]:
        return pascal_class_ids("val", self.fold, self.class_split)

    @property
    def train_class_ids(self) -> list[int]:
        """The training classes (none for the test-only ``coco2pascal`` split)."""
        if self.class_split == "coco2pascal":
            return []
        return pascal_class_ids("train", self.fold, self.class_split)

    def dataset_kwargs(self) -> dict[str, Any]:
        return {
            **super().dataset_kwargs(),
            "root": self.root,
            "split_dir": self.split_dir,
            "class_split": self.class_split,
            "min_fg_pixels": self.min_fg_pixels,
            "protocol": self.protocol,
        }
