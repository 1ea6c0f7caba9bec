"""FSS-1000, and the same folder layout for one's own dataset.

Layout under ``root`` (``root`` may also contain these inside an ``FSS-1000`` folder, as in HSNet)::

    <class name>/<stem>.jpg     image (.jpg, .jpeg or .png)
    <class name>/<stem>.png     its mask (for .png images: <stem>_mask.png; <stem>_mask.png works for all)

One folder per class, any number of images per class, any image size. Masks are single-channel (or RGB,
converted to grey) PNGs: foreground where the value is >= 128, or, for masks whose values are only 0
and 1, where it is 1 (``mask_rule: auto``; ``threshold`` is HSNet's rule, >= 128 always). A mask of
another size than its image is resized straight to ``img_size``, as HSNet does. FSS-1000 has 1000
classes of 10 images (224 x 224).

Splits (``train`` / ``val`` / ``test`` are disjoint sets of classes):

* ``split_dir`` with ``trn.txt``, ``val.txt``, ``test.txt`` (one class folder name per line, the official
  FSS-1000 lists of 520 / 240 / 240 classes): the published protocol. Folders in no list are ignored.
* otherwise a seeded random split (``split_seed``) of all class folders in the proportions
  52% / 24% / 24% (520 / 240 / 240 for 1000 classes; at least one class each), with a warning:
  published numbers use the official lists.

Class ids: the train classes (sorted by name), then the val classes, then the test classes, as in the
reference (test class ``k`` of FSS-1000 has id ``760 + k``). There are no folds (``fold`` is 0).

Episodes: val/test visit every image of the split once as the query (``val_episodes`` /
``test_episodes: null``, the default; with a number ``n`` the queries are spread over the list, cycled
when ``n`` is larger), with ``shot`` distinct other images of its class as supports, drawn from the
episode generator. Training: one epoch = every training image once as the query, in shuffled order.
``episode_order: hsnet`` follows HSNet's test sequence instead (``fss/data/protocols.py``): file
names in string order (1, 10, 2, ...), supports drawn with replacement from one seeded legacy stream.
HSNet's FSS-1000 loader always scores at ``img_size`` (it has no original-size mode); fss allows
``use_original_imgsize`` here, which no reference number used.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fss.data.common import (
    IMAGE_SUFFIXES,
    DatasetLayoutError,
    FileDataModule,
    ImageEpisodeDataset,
    query_position,
    read_image,
    read_label,
    read_lines,
)
from fss.data.masks import mask_foreground

log = logging.getLogger(__name__)

LAYOUT = """  <root>/<class name>/<stem>.jpg   with its mask <root>/<class name>/<stem>.png
  (.png images: mask <stem>_mask.png; <root>/FSS-1000/<class name>/... is accepted too)"""

#: the FSS-1000 split proportions (train, val, test) used without split lists
SPLIT_FRACTIONS: tuple[float, float, float] = (0.52, 0.24, 0.24)
_LIST_FILES = {"train": "trn.txt", "val": "val.txt", "test": "test.txt"}
#: (root, split_seed) of the random splits already announced in this process (warn once each)
_ANNOUNCED: set[tuple[str, int]] = set()

#: how mask files become 0/1 masks (see :class:`FSS1000DataModule`)
MaskRule = Literal["threshold", "auto"]

#: (image file, mask file) names inside a class folder
ImageItem = tuple[str, str, str]


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def resolve_folder_root(root: str | Path) -> Path:
    """``root/FSS-1000`` when it exists, else ``root``; raise when it does not exist."""
    root = Path(root).expanduser()
    if (root / "FSS-1000").is_dir():
        return root / "FSS-1000"
    if not root.is_dir():
        raise DatasetLayoutError(
            f"FSS-1000 / folder dataset root {root} does not exist. Expected layout:\n{LAYOUT}"
        )
    return root


def class_folders(root: Path) -> list[str]:
    """Names of the class folders under ``root`` (non-hidden sub-folders), sorted."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetLayoutError(f"{root} holds no class folders. Expected layout:\n{LAYOUT}")
    return names


def list_images(folder: Path) -> list[tuple[str, str]]:
    """``(image file, mask file)`` names of a class folder, in natural order (1, 2, ..., 10).

    Raises:
        DatasetLayoutError: naming an image that has no mask.
    """
    files = {p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    stems_with_jpeg = {Path(f).stem for f in files if Path(f).suffix.lower() != ".png"}
    pairs = []
    for name in sorted(files, key=_natural_key):
        stem, suffix = Path(name).stem, Path(name).suffix.lower()
        if stem.endswith("_mask") or (suffix == ".png" and stem in stems_with_jpeg):
            continue  # a mask
        candidates = [f"{stem}_mask.png"] + ([f"{stem}.png"] if suffix != ".png" else [])
        mask = next((c for c in candidates if c in files), None)
        if mask is None:
            raise DatasetLayoutError(
                f"image {folder / name} has no mask: expected "
                + " or ".join(str(folder / c) for c in candidates)
            )
        pairs.append((name, mask))
    return pairs


def split_sizes(num_classes: int) -> tuple[int, int, int]:
    """(train, val, test) class counts for ``num_classes`` classes: 52/24/24 %, at least one each."""
    if num_classes < 3:
        raise ValueError(f"a train/val/test class split needs at least 3 class folders, found {num_classes}")
    n_val = max(1, round(SPLIT_FRACTIONS[1] * num_classes))
    n_test = max(1, round(SPLIT_FRACTIONS[2] * num_classes))
    return num_classes - n_val - n_test, n_val, n_test


def class_splits(
    root: Path, split_dir: str | Path | None = None, split_seed: int = 0
) -> dict[str, list[str]]:
    """Class folder names of each split (``train``, ``val``, ``test``), each sorted."""
    folders = class_folders(root)
    if split_dir is not None:
        split_dir = Path(split_dir).expanduser()
        on_disk = set(folders)
        splits, seen = {}, {}
        for split, file in _LIST_FILES.items():
            path = split_dir / file
            if not path.is_file():
                raise DatasetLayoutError(
                    f"class list {path} not found: data.split_dir must hold trn.txt, val.txt, test.txt"
                )
            names = read_lines(path)
            for name in names:
                if name not in on_disk:
                    raise DatasetLayoutError(f"class {name!r} of {path} has no folder {root / name}")
                if name in seen:
                    raise ValueError(f"class {name!r} is in both {seen[name]} and {path}")
                seen[name] = path
            splits[split] = sorted(names)
        unused = len(folders) - len(seen)
        if unused:
            log.info(
                "FSS-1000: %d class folders under %s are in no list of %s (ignored)", unused, root, split_dir
            )
        return splits
    n_train, n_val, _ = split_sizes(len(folders))
    order = [folders[i] for i in np.random.default_rng(split_seed).permutation(len(folders))]
    if (str(root), split_seed) not in _ANNOUNCED:
        _ANNOUNCED.add((str(root), split_seed))
        log.warning(
            "FSS-1000: no data.split_dir, splitting %d classes at random (split_seed=%d) into %d/%d/%d "
            "train/val/test classes; published FSS-1000 numbers use the official trn/val/test lists.",
            len(folders),
            split_seed,
            n_train,
            n_val,
            len(folders) - n_train - n_val,
        )
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def ordered_class_names(splits: dict[str, list[str]]) -> list[str]:
    """Global class order: train classes, then val, then test."""
    return [*splits["train"], *splits["val"], *splits["test"]]


class FSS1000Dataset(ImageEpisodeDataset):
    """Episodes of one split of a folder-per-class dataset (FSS-1000 or one's own; see the module docstring).

    Args:
        root: folder of class folders (or containing ``FSS-1000``).
        split, shot, num_episodes, seed, img_size, use_original_imgsize: see
            :class:`~fss.data.base.EpisodicDataset` (``num_episodes=None``: every image once).
        fold: must be 0 (no folds).
        split_dir: folder with ``trn.txt``, ``val.txt``, ``test.txt`` class lists (optional).
        split_seed: seed of the random class split used without ``split_dir``.
        **kwargs: the options of :class:`~fss.data.common.ImageEpisodeDataset` (augmentation, resizing,
            episode order, boundary pixels, validation part).
    """

    num_classes: ClassVar[int] = 1000
    class_names: ClassVar[Sequence[str]] = ()
    num_folds: ClassVar[int] = 1
    display_name = "FSS-1000"

    def __init__(
        self,
        root: str | Path,
        split: str,
        fold: int = 0,
        shot: int = 1,
        num_episodes: int | None = None,
        seed: int = 0,
        img_size: int = 400,
        use_original_imgsize: bool = False,
        split_dir: str | Path | None = None,
        split_seed: int = 0,
        mask_rule: MaskRule = "auto",
        **kwargs: Any,
    ) -> None:
        if mask_rule not in ("threshold", "auto"):
            raise ValueError(f"data.mask_rule must be 'threshold' or 'auto', got {mask_rule!r}")
        self.mask_rule = mask_rule
        self._warned_01: set[Path] = set()  # class folders whose 0/1 masks were reported
        self.root = resolve_folder_root(root)
        self.splits = class_splits(self.root, split_dir, split_seed)
        names = ordered_class_names(self.splits)
        self.num_classes = len(names)  # type: ignore[misc]
        self.class_names = names  # type: ignore[misc]
        super().__init__(
            split=split,
            fold=fold,
            shot=shot,
            num_episodes=num_episodes,
            seed=seed,
            img_size=img_size,
            use_original_imgsize=use_original_imgsize,
            **kwargs,
        )
        for c in self.class_ids:
            folder = self.root / names[c]
            self.class_items[c] = [(names[c], img, mask) for img, mask in list_images(folder)]
        self.finalize_classes()
        self.queries: list[tuple[ImageItem, int]] = [
            (item, c) for c in self.usable_class_ids for item in self.class_items[c]
        ]
        #: the reference's query order: class by class, file names sorted as strings (1, 10, 2, ...)
        self.string_ordered_queries = [
            (item, c)
            for c in self.usable_class_ids
            for item in sorted(self.class_items[c], key=lambda i: i[1])
        ]

    def split_class_ids(self, split: str, fold: int) -> list[int]:  # type: ignore[override]
        start = {"train": 0, "val": len(self.splits["train"])}.get(split)
        if start is None:
            start = len(self.splits["train"]) + len(self.splits["val"])
        return list(range(start, start + len(self.splits[split])))

    def default_num_episodes(self) -> int:
        return len(self.queries)

    # ------------------------------------------------------------------ items
    def pick_query(self, rng: np.random.Generator, index: int) -> tuple[ImageItem, int]:
        return self.queries[query_position(index, self.num_episodes, len(self.queries))]

    def reference_query(self, rs: np.random.RandomState, index: int) -> tuple[ImageItem, int]:
        return self.string_ordered_queries[index % len(self.string_ordered_queries)]

    def load_image(self, item: ImageItem) -> np.ndarray:
        return read_image(self.root / item[0] / item[1])

    def load_target(self, item: ImageItem, class_id: int, query: bool) -> np.ndarray:
        path = self.root / item[0] / item[2]
        label = read_label(path, grey=True)
        if self.mask_rule == "auto":
            # by meaning (fss.data.masks): 0/1, 0/255 and anti-aliased masks (>= 128 as the reference),
            # class-index masks (e.g. {0, 15}) by their class instead of as empty
            return mask_foreground(label, False, path, allow_empty=True).astype(np.uint8)
        if label.max() == 1 and path.parent not in self._warned_01:  # a 0/1 mask, empty by the threshold
            self._warned_01.add(path.parent)
            log.warning(
                "FSS-1000: mask %s holds only 0 and 1, which the threshold rule (grey >= 128, as HSNet "
                "and VAT) reads as empty; set data.mask_rule: auto to read masks by meaning",
                path,
            )
        return (label >= 128).astype(np.uint8)

    def item_name(self, item: ImageItem) -> str:
        return f"{item[0]}/{Path(item[1]).stem}"

    def item_files(self, item: ImageItem) -> list[Path]:
        return [self.root / item[0] / item[1], self.root / item[0] / item[2]]


class FSS1000DataModule(FileDataModule):
    """FSS-1000 (or one's own folder-per-class dataset) episodes.

    Args:
        root: folder of class folders (``<class>/<stem>.jpg`` + ``<class>/<stem>.png``), or containing
            ``FSS-1000``.
        split_dir: folder with the class lists ``trn.txt``, ``val.txt``, ``test.txt``; ``null`` splits
            the classes at random (seeded by ``split_seed``; 52/24/24 %).
        split_seed: seed of that random class split (independent of the episode ``seed``).
        mask_rule: ``auto``: masks holding only 0 and 1 take 1 as foreground, all others the grey
            value >= 128; ``threshold``: always grey >= 128, exactly as HSNet and VAT read masks (a mask
            holding only 0 and 1 then reads as empty, with a warning naming it; the reproduction
            configs use it, although FSS-1000's own masks are 0/255, where the two agree).
        **kwargs: the augmentation options of :class:`~fss.data.common.FileDataModule` and the shared
            episode options of :class:`~fss.data.base.EpisodicDataModule` (``fold`` is always 0:
            FSS-1000 has no folds; episode counts ``null``: every image of the split once as the query).
    """

    dataset_class = FSS1000Dataset

    def __init__(
        self,
        root: str,
        split_dir: str | None = None,
        split_seed: int = 0,
        mask_rule: MaskRule = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mask_rule not in ("threshold", "auto"):
            raise ValueError(f"data.mask_rule must be 'threshold' or 'auto', got {mask_rule!r}")
        self.root = root
        self.split_dir = split_dir
        self.split_seed = split_seed
        self.mask_rule: MaskRule = mask_rule
        self._splits: dict[str, list[str]] | None = None

    @property
    def splits(self) -> dict[str, list[str]]:
        """Class names of each split (reads the class folders once)."""
        if self._splits is None:
            self._splits = class_splits(resolve_folder_root(self.root), self.split_dir, self.split_seed)
        return self._splits

    @property
    def num_classes(self) -> int:
        return len(ordered_class_names(self.splits))

    @property
    def class_names(self) -> list[str]:
        return ordered_class_names(self.splits)

    def _split_ids(self, split: str) -> list[int]:
        offset = {"train": 0, "val": len(self.splits["train"])}
        start = offset.get(split, len(self.splits["train"]) + len(self.splits["val"]))
        return list(range(start, start + len(self.splits[split])))

    @property
    def eval_class_ids(self) -> list[int]:
        """The test classes (val episodes use the val classes: ``self._split_ids('val')``)."""
        return self._split_ids("test")

    @property
    def train_class_ids(self) -> list[int]:
        return self._split_ids("train")

    def dataset_kwargs(self) -> dict[str, Any]:
        return {
            **super().dataset_kwargs(),
            "root": self.root,
            "split_dir": self.split_dir,
            "split_seed": self.split_seed,
            "mask_rule": self.mask_rule,
        }
