"""COCO-20i: 80 COCO classes in 4 folds of 20, trained on ``train2014``, tested on ``val2014``.

Layout under ``root`` (``root`` may also contain these inside a ``COCO2014`` folder, as in HSNet)::

    train2014/COCO_train2014_<id>.jpg, val2014/COCO_val2014_<id>.jpg
    annotations/instances_train2014.json, annotations/instances_val2014.json    (mask_source: json)
    annotations/train2014/<stem>.png, annotations/val2014/<stem>.png            (mask_source: png)

The PNGs are pre-rendered semantic maps whose value is the 1-based class index (1..80, COCO's category
order = ascending category id), as distributed with HSNet/PFENet. ``mask_source: auto`` uses the PNGs
when their folder exists (faster, and the source of the published numbers), else the JSON.

Folds (``class_split``): ``interleaved`` (default; HSNet, VAT, ASNet, HM) puts the 1-based classes
``i+1, i+5, ..., i+77`` in fold ``i``; ``contiguous`` puts ``20i+1 .. 20i+20`` in fold ``i``.

JSON masks: the class mask is the union of the class's instances. Crowd (``iscrowd: 1``) regions
(``crowd``): ``include`` (default) counts them as the class, as a rendering of every annotation into
the semantic PNGs does (the published numbers come from such PNGs, read by a loader without an
ignore label for COCO), so the two sources agree; ``ignore`` marks crowd pixels that no plain
instance of the class covers as 255 in the query mask (ignored by loss and metric) and 0 in the
supports.

Which images hold which class: with ``split_dir``, the HSNet lists ``<split_dir>/{trn,val}/fold{i}.pkl``
(a pickle of ``{0-based class: ["train2014/<file>.jpg", ...]}``; load only files you trust); otherwise
every image with at least ``max(1, min_fg_pixels)`` pixels of the class (JSON: the summed instance
areas; PNG: counted once over all PNGs and cached in ``<root>/.fss_cache``). The published lists hold
fewer images per class, so exact published numbers need ``split_dir``.

Episodes (as the reference): the class is drawn uniformly from the fold's classes, then the query
uniformly from the class's images, then ``shot`` distinct other images as supports, all from the
episode generator, so the 1000 val/test episodes are fixed by ``(seed, fold)``. One training epoch is
as many episodes as distinct training images (``train_episodes: null``).
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fss.data.common import (
    PFENET_MIN_FG_PIXELS,
    Boundary,
    DatasetLayoutError,
    FileDataModule,
    ImageEpisodeDataset,
    Protocol,
    cache_dir,
    read_image,
    read_label,
    read_lines,
    write_lines,
)
from fss.data.episode import IGNORE_INDEX
from fss.data.protocols import legacy_pick

log = logging.getLogger(__name__)

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

CocoClassSplit = Literal["interleaved", "contiguous"]
MaskSource = Literal["auto", "json", "png"]
CrowdMode = Literal["include", "ignore"]

LAYOUT = """  <root>/train2014/*.jpg, <root>/val2014/*.jpg
  and either <root>/annotations/instances_{train,val}2014.json          (official COCO annotations)
  or         <root>/annotations/{train2014,val2014}/<image stem>.png     (semantic PNGs, value = class 1..80)
  (<root>/COCO2014/... is accepted too)"""


def image_set(split: str) -> str:
    """``train2014`` for training, ``val2014`` for val/test."""
    return "train2014" if split == "train" else "val2014"


def coco_fold_class_ids(fold: int, class_split: CocoClassSplit = "interleaved") -> list[int]:
    """0-based classes of COCO-20i fold ``fold``: ``fold + 4k`` (interleaved) or ``20 fold + k``."""
    if not 0 <= fold < 4:
        raise ValueError(f"fold must be in [0, 4), got {fold}")
    if class_split == "interleaved":
        return [fold + 4 * k for k in range(20)]
    if class_split == "contiguous":
        return list(range(20 * fold, 20 * fold + 20))
    raise ValueError(f"data.class_split must be 'interleaved' or 'contiguous', got {class_split!r}")


def coco_class_ids(split: str, fold: int, class_split: CocoClassSplit) -> list[int]:
    """Classes of ``split``: the fold's for val/test, the 60 others for training."""
    held_out = coco_fold_class_ids(fold, class_split)
    return [c for c in range(80) if c not in held_out] if split == "train" else held_out


def resolve_coco_root(root: str | Path) -> Path:
    """The folder holding ``train2014``/``val2014``/``annotations`` (``root`` or ``root/COCO2014``)."""
    root = Path(root).expanduser()
    for base in (root, root / "COCO2014"):
        if (base / "annotations").is_dir() and ((base / "train2014").is_dir() or (base / "val2014").is_dir()):
            return base
    state = "does not exist" if not root.exists() else "lacks annotations/ and train2014/ or val2014/"
    raise DatasetLayoutError(f"COCO-20i root {root} {state}. Expected layout:\n{LAYOUT}")


def choose_mask_source(base: Path, images: str, mask_source: MaskSource) -> str:
    """``json`` or ``png`` for image set ``images``, checking that the chosen source exists."""
    json_path = base / "annotations" / f"instances_{images}.json"
    png_dir = base / "annotations" / images
    if mask_source == "auto":
        if png_dir.is_dir():
            return "png"
        if json_path.is_file():
            return "json"
        raise DatasetLayoutError(
            f"COCO-20i: no masks for {images}: neither {png_dir}/ nor {json_path} exists. "
            f"Expected layout:\n{LAYOUT}"
        )
    if mask_source == "png":
        if not png_dir.is_dir():
            raise DatasetLayoutError(f"COCO-20i: data.mask_source=png but {png_dir}/ does not exist")
        return "png"
    if mask_source == "json":
        if not json_path.is_file():
            raise DatasetLayoutError(f"COCO-20i: data.mask_source=json but {json_path} does not exist")
        return "json"
    raise ValueError(f"data.mask_source must be 'auto', 'json' or 'png', got {mask_source!r}")


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to a uint8 [H, W] mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    with warnings.catch_warnings():  # pycocotools' Cython __array__ predates NumPy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


class CocoJsonAnnotations:
    """The instances of the wanted classes, per image, read from ``instances_<set>.json``.

    Attributes:
        sizes: image stem -> (height, width).
        instances: image stem -> class -> list of (segmentation, iscrowd).
        areas: image stem -> class -> summed instance area (crowd included unless ``crowd='ignore'``).
    """

    def __init__(self, path: Path, classes: set[int], crowd: CrowdMode) -> None:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise DatasetLayoutError(f"cannot read COCO annotations {path}: {err}") from err
        cat_ids = sorted(int(c["id"]) for c in data.get("categories", []))
        if len(cat_ids) != 80:
            raise DatasetLayoutError(
                f"{path} lists {len(cat_ids)} categories; COCO-20i needs the 80 COCO categories"
            )
        class_of = {cat: i for i, cat in enumerate(cat_ids)}
        stems = {int(im["id"]): Path(im["file_name"]).stem for im in data["images"]}
        self.sizes: dict[str, tuple[int, int]] = {
            Path(im["file_name"]).stem: (int(im["height"]), int(im["width"])) for im in data["images"]
        }
        self.instances: dict[str, dict[int, list[tuple[Any, bool]]]] = {}
        self.areas: dict[str, dict[int, float]] = {}
        for ann in data["annotations"]:
            c = class_of[int(ann["category_id"])]
            if c not in classes:
                continue
            stem, iscrowd = stems[int(ann["image_id"])], bool(ann.get("iscrowd", 0))
            self.instances.setdefault(stem, {}).setdefault(c, []).append((ann["segmentation"], iscrowd))
            if not iscrowd or crowd == "include":
                per_image = self.areas.setdefault(stem, {})
                per_image[c] = per_image.get(c, 0.0) + float(ann.get("area", 0.0))


def png_pixel_index(base: Path, images: str) -> dict[str, dict[int, int]]:
    """Class pixel counts of every semantic PNG of ``images``: stem -> {1-based class: pixels}.

    Computed once (reads every PNG) and cached as ``coco_<images>_png_pixels.txt``.
    """
    png_dir = base / "annotations" / images
    cache = cache_dir(base) / f"coco_{images}_png_pixels.txt"
    if not cache.is_file():
        files = sorted(png_dir.glob("*.png"))
        log.warning("COCO-20i: indexing %d masks in %s (once; cached in %s)", len(files), png_dir, cache)
        lines = []
        for path in files:
            counts = np.bincount(read_label(path).ravel(), minlength=256)[1:81]
            present = " ".join(f"{c + 1}:{int(counts[c])}" for c in np.flatnonzero(counts))
            lines.append(f"{path.stem} {present}".rstrip())
        write_lines(cache, lines)
    index: dict[str, dict[int, int]] = {}
    for line in read_lines(cache):
        stem, *entries = line.split()
        index[stem] = {int(c): int(n) for c, n in (e.split(":") for e in entries)}
    return index


def read_class_lists(path: Path, classes: list[int]) -> dict[int, list[str]]:
    """Class -> image stems from an HSNet-style pickle ``{0-based class: ["<set>/<file>.jpg", ...]}``."""
    if not path.is_file():
        raise DatasetLayoutError(
            f"COCO-20i class list {path} not found: "
            "data.split_dir must hold trn/fold0..3.pkl and val/fold0..3.pkl"
        )
    with open(path, "rb") as f:
        lists = pickle.load(f)  # noqa: S301 - a user-given file, documented as trusted
    if not isinstance(lists, dict):
        raise ValueError(
            f"{path}: expected a pickled dict {{class: [image paths]}}, got {type(lists).__name__}"
        )
    return {c: [Path(str(name)).stem for name in lists.get(c, [])] for c in classes}


class COCO20iDataset(ImageEpisodeDataset):
    """COCO-20i episodes of one split and fold (see the module docstring for the protocol).

    Args:
        root: folder with ``train2014``, ``val2014`` and ``annotations`` (or containing ``COCO2014``).
        split, fold, shot, num_episodes, seed, img_size, use_original_imgsize: see
            :class:`~fss.data.base.EpisodicDataset`.
        class_split: ``interleaved`` or ``contiguous`` folds.
        mask_source: ``auto``, ``json`` or ``png``.
        crowd: ``include`` or ``ignore`` crowd regions (JSON masks only).
        split_dir: folder with HSNet's ``{trn,val}/fold{i}.pkl`` class lists (optional).
        min_fg_pixels: without ``split_dir``, keep images with at least this many class pixels.
        protocol: ``hsnet`` or ``pfenet`` (:class:`COCO20iDataModule`).
        **kwargs: the options of :class:`~fss.data.common.ImageEpisodeDataset` (augmentation, resizing,
            episode order, boundary pixels, validation part).
    """

    num_classes: ClassVar[int] = 80
    pfenet_scale = (0.8, 1.25)
    class_names: ClassVar[tuple[str, ...]] = COCO_CLASSES
    num_folds: ClassVar[int] = 4
    display_name = "COCO-20i"
    #: the reference loaders have no ignore label for COCO: value 255 in a PNG is background
    reference_boundary: ClassVar[dict[str, Boundary]] = {"train": "background", "eval": "background"}

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
        class_split: CocoClassSplit = "interleaved",
        mask_source: MaskSource = "auto",
        crowd: CrowdMode = "include",
        split_dir: str | Path | None = None,
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
        #: PFENet: training images that show a held-out class are left out
        self.excluded_classes = (
            set(coco_class_ids("val", fold, class_split))
            if (protocol == "pfenet" and split == "train")
            else set()
        )
        if crowd not in ("include", "ignore"):
            raise ValueError(f"data.crowd must be 'include' or 'ignore', got {crowd!r}")
        self.base = resolve_coco_root(root)
        self.images = image_set(split)
        if not (self.base / self.images).is_dir():
            raise DatasetLayoutError(
                f"COCO-20i {split} images need {self.base / self.images}/. Expected layout:\n{LAYOUT}"
            )
        self.mask_source = choose_mask_source(self.base, self.images, mask_source)
        self.crowd = crowd
        if crowd == "ignore" and self.mask_source == "png":
            log.warning(
                "COCO-20i: data.crowd=ignore has no effect with PNG masks (they carry no crowd label)"
            )
        self.annotations: CocoJsonAnnotations | None = None
        if self.mask_source == "json":
            json_path = self.base / "annotations" / f"instances_{self.images}.json"
            indexed = set(self.class_ids) | self.excluded_classes
            self.annotations = CocoJsonAnnotations(json_path, indexed, crowd)
        if split_dir is not None:
            list_split = "trn" if split == "train" else "val"
            path = Path(split_dir).expanduser() / list_split / f"fold{fold}.pkl"
            self.class_items = read_class_lists(path, self.class_ids)
        else:
            self.class_items = self._index_classes(max(1, min_fg_pixels))
        self.finalize_classes()
        self.num_images = len(self.items())

    def split_class_ids(self, split: str, fold: int) -> list[int]:  # type: ignore[override]
        return coco_class_ids(split, fold, self.class_split)

    def _index_classes(self, threshold: int) -> dict[int, list[str]]:
        """Class -> sorted image stems with at least ``threshold`` pixels (or area) of the class."""
        class_items: dict[int, list[str]] = {c: [] for c in self.class_ids}
        if self.annotations is not None:
            per_image: dict[str, dict[int, float]] = self.annotations.areas  # type: ignore[assignment]
        else:
            per_image = png_pixel_index(self.base, self.images)  # type: ignore[assignment]
            per_image = {stem: {c - 1: n for c, n in counts.items()} for stem, counts in per_image.items()}
        for stem in sorted(per_image):
            if any(per_image[stem].get(c, 0) > 0 for c in self.excluded_classes):
                continue
            for c, amount in per_image[stem].items():
                if c in class_items and amount >= threshold:
                    class_items[c].append(stem)
        return class_items

    def default_num_episodes(self) -> int:
        return self.num_images if self.split == "train" else 1000

    # ------------------------------------------------------------------ items
    def pick_query(self, rng: np.random.Generator, index: int) -> tuple[str, int]:
        class_id = self.usable_class_ids[int(rng.integers(len(self.usable_class_ids)))]
        items = self.class_items[class_id]
        return items[int(rng.integers(len(items)))], class_id

    def reference_query(self, rs: np.random.RandomState, index: int) -> tuple[str, int]:
        # the class among the fold's classes, then the query among its images (index unused)
        class_id = self.usable_class_ids[legacy_pick(rs, len(self.usable_class_ids))]
        items = self.class_items[class_id]
        return items[legacy_pick(rs, len(items))], class_id

    def image_path(self, stem: str) -> Path:
        return self.base / self.images / f"{stem}.jpg"

    def mask_path(self, stem: str) -> Path | None:
        """The semantic PNG of ``stem`` (``None`` with JSON masks)."""
        return self.base / "annotations" / self.images / f"{stem}.png" if self.mask_source == "png" else None

    def load_image(self, item: str) -> np.ndarray:
        return read_image(self.image_path(item))

    def load_class_map(self, item: str) -> np.ndarray | None:
        """The PNG class map (``class_maps``); JSON annotations give none."""
        mask_path = self.mask_path(item)
        return read_label(mask_path) if mask_path is not None else None

    def gfss_index(self) -> tuple[list[str], dict[int, list[str]]]:
        """GFSS lists from the semantic PNGs: every ``val2014`` image, by file name, and per held-out class
        the images showing it (any size). BAM's own list (``lists/coco/val.txt``) is not public with its
        code, so its order, and thus which 1000 images its test queries, may differ."""
        if self.mask_source != "png":
            raise ValueError(
                "COCO-20i: GFSS episodes (data.gfss) label every class of the query, which needs the semantic "
                f"PNG masks ({self.base / 'annotations' / self.images}/<stem>.png; data.mask_source: png)"
            )
        index = png_pixel_index(self.base, self.images)
        stems = sorted(index)
        pools = {c: [s for s in stems if index[s].get(c + 1, 0) > 0] for c in self.class_ids}
        return stems, pools

    def load_target(self, item: str, class_id: int, query: bool) -> np.ndarray:
        mask_path = self.mask_path(item)
        if mask_path is not None:
            label = read_label(mask_path)
            target = (label == class_id + 1).astype(np.uint8)
            if self.ignores_boundary():
                target[label == IGNORE_INDEX] = IGNORE_INDEX
            return target
        assert self.annotations is not None
        height, width = self.annotations.sizes[item]
        fg = np.zeros((height, width), dtype=bool)
        crowd = np.zeros((height, width), dtype=bool)
        for segm, iscrowd in self.annotations.instances.get(item, {}).get(class_id, []):
            m = decode_segmentation(segm, height, width).astype(bool)
            if iscrowd and self.crowd == "ignore":
                crowd |= m
            else:
                fg |= m
        target = fg.astype(np.uint8)
        target[crowd & ~fg] = IGNORE_INDEX
        return target

    def item_name(self, item: str) -> str:
        return item

    def item_files(self, item: str) -> list[Path]:
        mask_path = self.mask_path(item)
        return [self.image_path(item)] + ([mask_path] if mask_path is not None else [])


class COCO20iDataModule(FileDataModule):
    """COCO-20i episodes (train on ``train2014``, val/test on ``val2014``).

    Args:
        root: folder with ``train2014``, ``val2014`` and ``annotations`` (or containing ``COCO2014``).
        class_split: ``interleaved`` (HSNet/VAT/ASNet/HM: fold i = classes i+1, i+5, ..., 1-based) or
            ``contiguous`` (fold i = classes 20i+1 .. 20i+20).
        mask_source: ``auto`` (PNGs if present, else JSON), ``json`` (pycocotools) or ``png``.
        crowd: JSON masks: ``include`` crowd regions as the class (as the PNGs do) or ``ignore`` them.
        split_dir: folder with HSNet's ``{trn,val}/fold{i}.pkl`` lists (trusted pickles); ``null``
            indexes the masks.
        min_fg_pixels: without ``split_dir``, keep (image, class) pairs with at least this many pixels.
        protocol: ``hsnet`` or ``pfenet`` (PFENet/BAM/NTRENet's: training crops of ``img_size`` (641)
            with PFENet's augmentation (scale 0.8-1.25), evaluation images resized with their aspect
            kept and padded and scored on the original label (with ``use_original_imgsize``), pairs
            with at least 2048 class pixels, no training image that shows a held-out class; without
            ``split_dir``). See docs/models.md.
        **kwargs: the augmentation options of :class:`~fss.data.common.FileDataModule` and the shared
            episode options of :class:`~fss.data.base.EpisodicDataModule` (fold 0..3; episode counts
            ``null``: as many training episodes as training images, 1000 val/test episodes).
    """

    dataset_class = COCO20iDataset

    def __init__(
        self,
        root: str,
        class_split: CocoClassSplit = "interleaved",
        mask_source: MaskSource = "auto",
        crowd: CrowdMode = "include",
        split_dir: str | None = None,
        min_fg_pixels: int = 0,
        protocol: Protocol = "hsnet",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if protocol not in ("hsnet", "pfenet"):
            raise ValueError(f"data.protocol must be 'hsnet' or 'pfenet', got {protocol!r}")
        self.protocol: Protocol = protocol
        coco_fold_class_ids(self.fold, class_split)  # validates class_split
        if mask_source not in ("auto", "json", "png"):
            raise ValueError(f"data.mask_source must be 'auto', 'json' or 'png', got {mask_source!r}")
        if crowd not in ("include", "ignore"):
            raise ValueError(f"data.crowd must be 'include' or 'ignore', got {crowd!r}")
        if min_fg_pixels < 0:
            raise ValueError(f"data.min_fg_pixels must be >= 0, got {min_fg_pixels}")
        self.root = root
        self.class_split: CocoClassSplit = class_split
        self.mask_source: MaskSource = mask_source
        self.crowd: CrowdMode = crowd
        self.split_dir = split_dir
        self.min_fg_pixels = min_fg_pixels

    @property
    def eval_class_ids(self) -> list[int]:
        return coco_class_ids("val", self.fold, self.class_split)

    @property
    def train_class_ids(self) -> list[int]:
        return coco_class_ids("train", self.fold, self.class_split)

    def dataset_kwargs(self) -> dict[str, Any]:
        return {
            **super().dataset_kwargs(),
            "root": self.root,
            "class_split": self.class_split,
            "mask_source": self.mask_source,
            "crowd": self.crowd,
            "split_dir": self.split_dir,
            "min_fg_pixels": self.min_fg_pixels,
            "protocol": self.protocol,
        }
