"""Shared machinery of the file-based benchmarks (PASCAL-5i, COCO-20i, FSS-1000 / own folders).

* :class:`DatasetLayoutError` / :class:`DatasetFileError`: the errors a wrong root or a broken file
  raises, each naming the path, the expected layout and the fix.
* :func:`read_image` / :func:`read_label`: decode one file, naming it when it cannot be read.
* :func:`cache_dir`: where generated episode lists are cached (``<root>/.fss_cache``, or a user cache
  directory when the root is read-only); :func:`excluded_files` / :func:`exclude_files`: the broken
  files ``fss data check --fix-lists`` recorded there, which every dataset leaves out.
* :class:`Augmenter`: optional albumentations augmentation of training images and their target maps,
  seeded from the episode generator (so augmented episodes stay a pure function of their key).
* :class:`ImageEpisodeDataset`: an :class:`~fss.data.base.EpisodicDataset` whose classes map to lists
  of image items; it drops classes with fewer than ``shot + 1`` images (with a warning), draws
  supports without replacement and never equal to the query, and assembles the episode.
* :class:`FileDataModule`: the data module base of those datasets (adds the augmentation options).
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import abstractmethod
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from fss.data.base import EpisodicDataModule, EpisodicDataset
from fss.data.episode import IGNORE_INDEX, Episode
from fss.data.fscs import FSCSEpisode, make_image_fscs_episode
from fss.data.gfss import make_image_gfss_episode, usable_novel_classes
from fss.data.protocols import EpisodeIdentity, EpisodeOrder, check_episode_order, reference_sequence
from fss.data.transforms import (
    IMAGENET_MEAN,
    ResizeMethod,
    build_episode,
    check_resize,
    letterbox,
    pad_to_square,
    query_mask_tensor,
    resize_label,
    to_label_tensor,
)

log = logging.getLogger(__name__)

#: image file suffixes the folder datasets accept (lower case)
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")


#: what to do about a broken dataset file (said by every error that names one)
FIX_HINT = (
    " (re-extract or replace the file, or leave it out: fss data check --config YOUR_CONFIG --fix-lists)"
)
#: the list of left-out files in a dataset's cache directory, one path relative to the root per line
EXCLUDED_FILES = "excluded_files.txt"


class DatasetLayoutError(FileNotFoundError):
    """The dataset root is missing or does not have the expected layout."""


class DatasetFileError(OSError):
    """One file of the dataset is missing or cannot be decoded."""


#: what label value 255 means in query masks (see :class:`ImageEpisodeDataset`)
Boundary = Literal["reference", "ignore", "background"]
BOUNDARIES: tuple[str, ...] = ("reference", "ignore", "background")


def check_boundary(boundary: str, owner: str) -> None:
    """Raise a ``ValueError`` naming ``owner`` unless ``boundary`` is one of :data:`BOUNDARIES`."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"{owner}: boundary must be 'reference', 'ignore' or 'background', got {boundary!r}")


def check_val_fraction(val_fraction: float | None, owner: str) -> None:
    """Raise a ``ValueError`` naming ``owner`` unless ``val_fraction`` is ``None`` or in (0, 1)."""
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ValueError(
            f"{owner}: val_fraction must be null (validate on the test images, as the references) or in "
            f"(0, 1), got {val_fraction}"
        )


# --------------------------------------------------------------------------------------------- files
def require_dir(path: Path, what: str, layout: str) -> Path:
    """Return ``path`` if it is a directory, else raise :class:`DatasetLayoutError` naming ``layout``."""
    if not path.is_dir():
        raise DatasetLayoutError(f"{what} not found: {path} is not a directory. Expected layout:\n{layout}")
    return path


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3]; raise :class:`DatasetFileError` naming the file."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetFileError(f"image file missing: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetFileError(f"cannot read image {path}: {err}{FIX_HINT}") from err


def read_label(path: Path, grey: bool = False) -> np.ndarray:
    """Decode a label map PNG to a 2-D uint8 array [H, W] (palette indices or grey values).

    Args:
        path: the PNG.
        grey: convert to 8-bit grey first (FSS-1000 masks are sometimes stored as RGB).
    """
    try:
        with Image.open(path) as img:
            if grey or img.mode not in ("L", "P", "I", "I;16"):
                img = img.convert("L")
            label = np.array(img)
    except FileNotFoundError:
        raise DatasetFileError(f"mask file missing: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetFileError(f"cannot read mask {path}: {err}{FIX_HINT}") from err
    if label.ndim != 2:
        raise DatasetFileError(f"mask {path} is not a single-channel label map (shape {label.shape})")
    return label


def verify_file(path: Path) -> str | None:
    """``None`` when ``path`` exists and decodes completely, else the reason (for the check).

    The whole image is decoded (a truncated JPEG has a valid header; only decoding finds it).
    """
    if not path.is_file():
        return f"missing file {path}"
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError) as err:
        return f"unreadable file {path}: {err}"
    return None


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the header of an image file, ``None`` when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        return None


def cache_dir(root: Path) -> Path:
    """Directory for generated episode lists: ``<root>/.fss_cache``, or ``$XDG_CACHE_HOME/fss/<hash>``.

    The second (``~/.cache/fss/<hash of the root path>`` by default) is used when the dataset root is
    read-only.
    """
    local = root / ".fss_cache"
    try:
        local.mkdir(exist_ok=True)
        probe = local / f".write_test_{os.getpid()}"
        probe.touch()
        probe.unlink()
        return local
    except OSError:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fss"
        user = base / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        user.mkdir(parents=True, exist_ok=True)
        return user


def excluded_files(root: Path) -> set[str]:
    """The files (relative to ``root``) ``fss data check --fix-lists`` left out of ``root``'s episodes."""
    path = cache_dir(root) / EXCLUDED_FILES
    return set(read_lines(path)) if path.is_file() else set()


def exclude_files(root: Path, files: Sequence[Path]) -> Path:
    """Add ``files`` (under ``root``) to ``root``'s list of left-out files; return the list's path."""
    path = cache_dir(root) / EXCLUDED_FILES
    entries = excluded_files(root) | {_relative(f, root) for f in files}
    write_lines(path, sorted(entries))
    return path


def _relative(path: Path, root: Path) -> str:
    for p, r in ((path, root), (path.resolve(), root.resolve())):
        try:
            return p.relative_to(r).as_posix()
        except ValueError:
            continue
    return path.resolve().as_posix()


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` to ``path`` atomically (a concurrent reader sees the old or the new file)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(path)


def read_lines(path: Path) -> list[str]:
    """The non-empty stripped lines of a text file."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def query_position(index: int, num_episodes: int, num_items: int) -> int:
    """Which of ``num_items`` list entries is the query of episode ``index`` (of ``num_episodes``).

    ``index % num_items`` when the list is not longer than the episode count (the reference PASCAL rule:
    the list is cycled), else ``index * num_items // num_episodes``, spreading the episodes evenly over
    the whole list instead of using only its first ``num_episodes`` entries.
    """
    if num_items <= num_episodes:
        return index % num_items
    return index * num_items // num_episodes


def match_size(label: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Resize a label map [h, w] (nearest) to the image's [H, W] when they differ (as the references do)."""
    if label.shape == image.shape[:2]:
        return label
    resized = resize_label(to_label_tensor(label.astype(np.int64)), tuple(image.shape[:2]))
    return resized.numpy().astype(label.dtype)


# --------------------------------------------------------------------------------------- augmentation
def default_augmentation() -> Any:
    """The built-in training augmentation (``augment: true``), close to the PFENet/VAT recipe.

    Horizontal flip (p 0.5); affine scale 0.8-1.25 and rotation +-10 degrees (p 0.8; pixels moved in
    from outside the image are ignore (255) in the query mask, background in the supports); Gaussian
    blur (p 0.2); colour jitter (p 0.2).
    """
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.8, 1.25), rotate=(-10, 10), fill=0, fill_mask=IGNORE_INDEX, p=0.8),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.2),
        ]
    )


#: the evaluation protocols of the PASCAL/COCO modules (docs/models.md)
Protocol = Literal["hsnet", "pfenet"]
#: PFENet's list rule: a class counts in an image from this many pixels on (2 x 32 x 32)
PFENET_MIN_FG_PIXELS = 2 * 32 * 32


def pfenet_augmentation(size: int, scale: tuple[float, float]) -> Any:
    """PFENet's (and BAM's) training augmentation, with albumentations.

    Random scale in ``scale``; rotation in +-10 degrees (p 0.5; pixels from outside: the mean colour,
    ignore in the label); Gaussian blur with a 5 x 5 kernel (p 0.5); horizontal flip (p 0.5); a random
    ``size`` x ``size`` crop, padded first (centred, mean colour / ignore) when smaller. The same
    steps as the reference's ``util/transform.py``; the random draws are albumentations'.
    """
    import albumentations as A
    import cv2

    mean = tuple(round(255 * m) for m in IMAGENET_MEAN)
    return A.Compose(
        [
            A.RandomScale(scale_limit=(scale[0] - 1, scale[1] - 1), interpolation=cv2.INTER_LINEAR, p=1.0),
            A.Rotate(
                limit=(-10, 10), border_mode=cv2.BORDER_CONSTANT, fill=mean, fill_mask=IGNORE_INDEX, p=0.5
            ),
            A.GaussianBlur(blur_limit=(5, 5), sigma_limit=(0, 0), p=0.5),
            A.HorizontalFlip(p=0.5),
            A.PadIfNeeded(size, size, border_mode=cv2.BORDER_CONSTANT, fill=mean, fill_mask=IGNORE_INDEX),
            A.RandomCrop(size, size),
        ]
    )


class Augmenter:
    """Albumentations augmentation of (image, target map) pairs, seeded per call.

    Args:
        augment: use the built-in recipe (:func:`default_augmentation`).
        augment_config: path to a pipeline saved with ``albumentations.save(transform, path)`` (JSON, or
            YAML when the file ends in ``.yaml``/``.yml``); takes precedence over the built-in recipe.

    The transform must keep image and mask aligned (use ``A.Compose``); target maps are uint8 with values
    0 / 1 / 255, so use nearest mask interpolation (albumentations' default) and, for padding, fill the
    mask with 255 (ignored) or 0.
    """

    def __init__(self, augment: bool = False, augment_config: str | None = None) -> None:
        self.transform: Any = None
        if augment_config is not None:
            import albumentations as A

            path = Path(augment_config).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"data.augment_config: {path} not found; "
                    "write one with albumentations.save(transform, path)"
                )
            fmt = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"
            self.transform = A.load(str(path), data_format=fmt)
        elif augment:
            self.transform = default_augmentation()

    @property
    def enabled(self) -> bool:
        return self.transform is not None

    def __call__(
        self, rng: np.random.Generator, image: np.ndarray, target: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment ``image`` uint8 [H, W, 3] and ``target`` uint8 [H, W] with a seed drawn from ``rng``."""
        if self.transform is None:
            return image, target
        self.transform.set_random_seed(int(rng.integers(2**31 - 1)))
        out = self.transform(image=image, mask=target)
        return np.asarray(out["image"]), np.asarray(out["mask"])


# ------------------------------------------------------------------------------------------ datasets
def usable_classes(
    class_items: Mapping[int, Sequence[Hashable]],
    class_ids: Sequence[int],
    shot: int,
    dataset: str,
    class_names: Sequence[str],
    min_items: int | None = None,
) -> list[int]:
    """The classes of ``class_ids`` with at least ``min_items`` images (default ``shot + 1``); warn about the others.

    Raises:
        ValueError: when no class is left (naming the classes and their image counts).
    """
    need = shot + 1 if min_items is None else min_items
    rule = f"shot+1={need}" if min_items is None else f"{need}"
    keep, dropped = [], []
    for c in class_ids:
        n = len(class_items.get(c, ()))
        (keep if n >= need else dropped).append((c, n))
    if dropped:
        listed = ", ".join(f"{class_names[c]} ({n})" for c, n in dropped[:10])
        if len(dropped) > 10:
            listed += f", ... ({len(dropped) - 10} more)"
        log.warning(
            "%s: skipping %d class(es) with fewer than %s images: %s",
            dataset,
            len(dropped),
            rule,
            listed,
        )
    if not keep:
        listed = ", ".join(f"{class_names[c]} ({n})" for c, n in dropped[:20]) or "none"
        raise ValueError(
            f"{dataset}: no class has the {rule} images an episode needs (images per class: "
            f"{listed}); lower data.shot or check data.root"
        )
    return [c for c, _ in keep]


def validation_items(class_items: Mapping[int, Sequence[Hashable]], fraction: float) -> set[Hashable]:
    """The items set aside for validation when val and test share classes (``data.val_fraction``).

    Class-stratified and deterministic (a function of the lists alone, seeded with 0): classes are
    visited from the one with the fewest distinct items; each puts ``round(fraction * n)`` of its
    ``n`` items into the validation part, counting those an earlier (rarer) class already placed there
    and drawing the rest at random among its items not placed yet. An item (image) is in exactly one
    part, so no test query or support is ever seen during validation.
    """
    rng = np.random.default_rng(0)
    in_val: dict[Hashable, bool] = {}
    distinct = {c: list(dict.fromkeys(items)) for c, items in class_items.items()}
    for c in sorted(distinct, key=lambda c: (len(distinct[c]), c)):
        items = distinct[c]
        target = round(fraction * len(items))
        have = sum(in_val.get(item, False) for item in items)
        free = [item for item in items if item not in in_val]
        take = min(max(target - have, 0), len(free))
        for rank, k in enumerate(rng.permutation(len(free))):
            in_val[free[int(k)]] = rank < take
    return {item for item, chosen in in_val.items() if chosen}


class ImageEpisodeDataset(EpisodicDataset):
    """An episodic dataset over labelled image files.

    Subclasses fill ``self.class_items`` (class id -> items holding the class, in a fixed order) and
    implement :meth:`pick_query`, :meth:`load_image`, :meth:`load_target` and :meth:`item_name`.
    Call :meth:`finalize_classes` at the end of ``__init__``: it drops classes with fewer than
    ``shot + 1`` items (with a warning) and sets ``self.usable_class_ids``.

    A reference's test sequence (:mod:`fss.data.protocols`) needs :meth:`reference_query` (and
    :meth:`reference_pool` when the supports come from another list than ``class_items``).

    Args:
        *args, **kwargs: the arguments of :class:`~fss.data.base.EpisodicDataset`.
        augment, augment_config: training augmentation (see :class:`Augmenter`).
        resize: ``pil`` or ``opencv``: whose resizing and normalisation to reproduce
            (:mod:`fss.data.transforms`).
        episode_order: ``fss``, ``hsnet`` or ``asnet``: how val/test episodes are drawn
            (:mod:`fss.data.protocols`); a reference order needs 2 images per class, not ``shot + 1``.
        boundary: what label value 255 (VOC's object boundaries, COCO PNGs' unlabelled pixels)
            means in query masks: ``reference`` (what the reference does for this benchmark and split,
            :attr:`reference_boundary`), ``ignore`` (ignored by loss and metric) or ``background``.
        val_fraction: ``None`` (the references: validation episodes use the test images) or the
            fraction of the held-out images that only validation uses (:func:`validation_items`);
            no effect where val and test have their own classes (FSS-1000).
    """

    #: a human name for messages
    display_name: str = "dataset"
    #: the random scale range of the ``pfenet`` protocol's training augmentation
    pfenet_scale: tuple[float, float] = (0.9, 1.1)
    #: what the reference makes of label value 255 in query masks, in training and in val/test
    reference_boundary: ClassVar[dict[str, Boundary]] = {"train": "ignore", "eval": "ignore"}

    def __init__(
        self,
        *args: Any,
        augment: bool = False,
        augment_config: str | None = None,
        resize: ResizeMethod = "pil",
        episode_order: EpisodeOrder = "fss",
        boundary: Boundary = "reference",
        val_fraction: float | None = None,
        protocol: Protocol = "hsnet",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        name = type(self).__name__
        check_resize(resize, name)
        check_episode_order(episode_order, name)
        check_boundary(boundary, name)
        check_val_fraction(val_fraction, name)
        if protocol not in ("hsnet", "pfenet"):
            raise ValueError(f"{name}: data.protocol must be 'hsnet' or 'pfenet', got {protocol!r}")
        self.augmenter = Augmenter(augment, augment_config) if self.split == "train" else Augmenter()
        if protocol == "pfenet" and self.split == "train" and augment_config is None:
            self.augmenter.transform = pfenet_augmentation(self.img_size, self.pfenet_scale)
        self.resize = resize
        self.episode_order = episode_order
        self.boundary = boundary
        self.val_fraction = val_fraction
        self.protocol = protocol
        self.class_items: dict[int, list[Any]] = {}
        self.usable_class_ids: list[int] = []
        self._sequence: list[EpisodeIdentity] | None = None

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def pick_query(self, rng: np.random.Generator, index: int) -> tuple[Any, int]:
        """``(item, class_id)`` of the query of episode ``index``."""

    @abstractmethod
    def load_image(self, item: Any) -> np.ndarray:
        """uint8 RGB [H, W, 3] of ``item``."""

    @abstractmethod
    def load_target(self, item: Any, class_id: int, query: bool) -> np.ndarray:
        """uint8 target map [H, W] of ``class_id`` in ``item``: 0 / 1, and 255 for ignored pixels."""

    @abstractmethod
    def item_name(self, item: Any) -> str:
        """A readable identifier of ``item`` (file stem or relative path)."""

    def load_class_map(self, item: Any) -> np.ndarray | None:
        """uint8 class map [H, W] of ``item`` (0 background, ``c + 1`` for class ``c``, 255 ignore) for
        ``class_maps``; None: this dataset has none (the episode then lacks ``query_classes``)."""
        return None

    @abstractmethod
    def item_files(self, item: Any) -> list[Path]:
        """The files ``item`` is read from (image first), for ``fss data check``."""

    def reference_query(self, rs: np.random.RandomState, index: int) -> tuple[Any, int]:
        """``(item, class_id)`` of the query of episode ``index`` as the reference test script picks it,
        drawing from the legacy generator ``rs`` what the reference draws (see :mod:`fss.data.protocols`)."""
        raise ValueError(f"{self.display_name} has no reference test sequence: use episode_order: fss")

    def reference_pool(self, class_id: int) -> list[Any]:
        """The items the reference draws the supports of ``class_id`` from, in its order."""
        return self.class_items[class_id]

    # ------------------------------------------------------------------ episode identities
    @property
    def follows_reference(self) -> bool:
        """Whether episodes follow a reference's test sequence (val/test with ``episode_order`` not ``fss``)."""
        return self.episode_order != "fss" and self.split != "train"

    @property
    def sequence(self) -> list[EpisodeIdentity] | None:
        """The identities of all episodes under a reference order (computed once), else ``None``.

        The data module computes it when it builds the dataset, so the workers and processes that
        receive a copy of the dataset share it.
        """
        if self._sequence is None and self.follows_reference:
            order: EpisodeOrder = self.episode_order  # type: ignore[assignment]
            self._sequence = reference_sequence(
                order, self.seed, self.num_episodes, self.shot, self.reference_query, self.reference_pool
            )
        return self._sequence

    def ignores_boundary(self) -> bool:
        """Whether label value 255 is ignored (255) in this split's query masks, else background."""
        mode = self.boundary
        if mode == "reference":
            mode = self.reference_boundary["train" if self.split == "train" else "eval"]
        return mode == "ignore"

    def identity(self, rng: np.random.Generator, index: int) -> EpisodeIdentity:
        """Query, supports and class of episode ``index`` (precomputed, or drawn with ``rng``)."""
        if self.sequence is not None:
            return self.sequence[index]
        query, class_id = self.pick_query(rng, index)
        return EpisodeIdentity(query, tuple(self.draw_supports(rng, class_id, query)), class_id)

    def episode_identity(self, index: int) -> tuple[str, list[str], int]:
        """``(query name, support names, class id)`` of episode ``index``, without reading any image."""
        query, supports, class_id = self.identity(self.rng(index), index)
        return self.item_name(query), [self.item_name(s) for s in supports], class_id

    # ------------------------------------------------------------------ shared logic
    @property
    def data_root(self) -> Path:
        """The dataset's root folder (its cache holds the left-out files): ``voc``, ``base`` or ``root``."""
        for name in ("voc", "base", "root"):
            value = getattr(self, name, None)
            if isinstance(value, Path):
                return value
        raise AttributeError(f"{type(self).__name__} has no root folder attribute (voc, base or root)")

    def finalize_classes(self) -> None:
        """Keep this split's part of the images (``val_fraction``) and the classes with enough of them
        (``shot + 1``, or 2 under a reference order, which draws supports with replacement).

        Items with a file in the root's left-out list (``fss data check --fix-lists``) are dropped first.
        """
        excluded = excluded_files(self.data_root)
        if excluded:
            root = self.data_root
            for c, items in self.class_items.items():
                self.class_items[c] = [
                    item
                    for item in items
                    if not any(_relative(f, root) in excluded for f in self.item_files(item))
                ]
        if self.val_fraction is not None and self.split != "train" and self.shares_eval_classes():
            chosen = validation_items(self.class_items, self.val_fraction)
            wanted = self.split == "val"
            self.class_items = {
                c: [item for item in items if (item in chosen) == wanted]
                for c, items in self.class_items.items()
            }
        self.usable_class_ids = usable_classes(
            self.class_items,
            self.class_ids,
            self.shot,
            f"{self.display_name} {self.split}",
            self.class_names,
            min_items=2 if self.follows_reference else None,
        )

    def shares_eval_classes(self) -> bool:
        """Whether val and test episodes draw from the same classes (they do in PASCAL-5i and COCO-20i)."""
        return set(self.split_class_ids("val", self.fold)) == set(self.split_class_ids("test", self.fold))

    def draw_supports(self, rng: np.random.Generator, class_id: int, query: Any) -> list[Any]:
        """``shot`` distinct items of ``class_id`` other than ``query``, drawn with ``rng``.

        (The reference code draws with replacement, so its 5-shot episodes may repeat a support; here the
        K supports are always K different images.)
        """
        pool = [item for item in self.class_items[class_id] if item != query]
        picks = rng.choice(len(pool), size=self.shot, replace=False)
        return [pool[int(i)] for i in picks]

    def load_pair(
        self, item: Any, class_id: int, query: bool, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image [H, W, 3] and target map of ``item``, augmented for training.

        The target map keeps its own size (the references resize a mask straight to ``img_size``,
        even when it is not the size of its image), except under augmentation, which needs the two
        aligned: there it is first resized to the image (nearest).
        """
        image = self.load_image(item)
        target = self.load_target(item, class_id, query)
        if self.augmenter.enabled:
            image, target = self.augmenter(rng, image, match_size(target, image))
        return image, target

    def load_query_with_classes(
        self, item: Any, class_id: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The query's image, target map and class map (None without one), augmented together.

        Without a class map (``class_maps`` off, or none in this dataset) this is :meth:`load_pair`.
        """
        classes = self.load_class_map(item) if self.class_maps else None
        if classes is None:
            return (*self.load_pair(item, class_id, True, rng), None)
        image = self.load_image(item)
        classes = match_size(classes, image)
        if self.augmenter.enabled:
            image, classes = self.augmenter(rng, image, classes)
        target = (classes == class_id + 1).astype(np.uint8)
        if self.ignores_boundary():  # as load_target: 255 ignored, or background (boundary)
            target[classes == 255] = 255
        return image, target, classes

    def evaluation_view(
        self, image: np.ndarray, label: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """PFENet's evaluation inputs (``protocol: pfenet``, not training): the query ``image`` [H, W, 3]
        and ``label`` [H, W] and the support ``pairs`` letterboxed to ``img_size`` (aspect kept, padded),
        and the original label padded to a square for scoring; otherwise all as they are.

        Returns:
            ``(image, label, pairs, original label)``.
        """
        if self.protocol != "pfenet" or self.split == "train":
            return image, label, pairs, label
        boxed_image, boxed_label = letterbox(image, label, self.img_size)
        boxed_pairs = [letterbox(img, tgt, self.img_size) for img, tgt in pairs]
        return boxed_image, boxed_label, boxed_pairs, pad_to_square(label)

    def assemble_episode(
        self,
        image: np.ndarray,
        target: np.ndarray,
        pairs: list[tuple[np.ndarray, np.ndarray]],
        class_id: int,
        query: Any,
        supports: list[Any],
    ) -> Episode:
        """:func:`build_episode` of a query, its 0/1/255 ``target`` and the support ``(image, mask)``
        ``pairs``, with this dataset's size, resize method, item names and original-size setting."""
        return build_episode(
            image,
            target,
            [img for img, _ in pairs],
            [tgt for _, tgt in pairs],
            class_id=class_id,
            img_size=self.img_size,
            query_name=self.item_name(query),
            support_names=[self.item_name(item) for item in supports],
            keep_original_mask=self.use_original_imgsize,
            resize=self.resize,
        )

    def make_episode(self, rng: np.random.Generator, index: int) -> Episode:
        query, supports, class_id = self.identity(rng, index)
        q_img, q_tgt, q_classes = self.load_query_with_classes(query, class_id, rng)
        pairs = [self.load_pair(item, class_id, False, rng) for item in supports]
        q_img, q_tgt, pairs, org_target = self.evaluation_view(q_img, q_tgt, pairs)
        episode = self.assemble_episode(q_img, q_tgt, pairs, class_id, query, supports)
        if q_classes is not None:
            episode["query_classes"] = query_mask_tensor(q_classes, self.img_size)
        if self.use_original_imgsize and org_target is not q_tgt:
            episode["org_query_mask"] = to_label_tensor(org_target)
        return episode

    def fscs_class_ids(self) -> list[int]:
        return self.usable_class_ids

    def make_fscs_episode(self, rng: np.random.Generator, index: int) -> FSCSEpisode:
        return make_image_fscs_episode(self, rng, index, self.way)

    # ------------------------------------------------------------------ GFSS (fss/data/gfss.py)
    def gfss_index(self) -> tuple[list[Any], dict[int, list[Any]]]:
        """The GFSS query list (every image of the split, in the reference's order) and, per class
        of this split, the images showing it with at least one pixel (the support pools)."""
        raise ValueError(f"{self.display_name} has no GFSS episodes (data.gfss); PASCAL-5i and COCO-20i do")

    def configure_gfss(self, gfss: bool) -> None:
        super().configure_gfss(gfss)
        if not gfss:
            return
        queries, pools = self.gfss_index()
        excluded = excluded_files(self.data_root)
        if excluded:
            root = self.data_root

            def kept(item: Any) -> bool:
                return not any(_relative(f, root) in excluded for f in self.item_files(item))

            queries = [q for q in queries if kept(q)]
            pools = {c: [item for item in items if kept(item)] for c, items in pools.items()}
        if not queries:
            raise ValueError(f"{self.display_name}: GFSS (data.gfss) found no query image; check data.root")
        owner = f"{self.display_name} {self.split}"
        self._gfss_novel_ids = usable_novel_classes(pools, self.class_ids, self.shot, owner)
        self.gfss_queries: list[Any] = queries
        self.gfss_pools: dict[int, list[Any]] = pools

    @property
    def gfss_novel_ids(self) -> list[int]:
        return getattr(self, "_gfss_novel_ids", self.class_ids)

    def make_gfss_episode(self, rng: np.random.Generator, index: int) -> Episode:
        return make_image_gfss_episode(self, rng, index)

    # ------------------------------------------------------------------ inspection
    def items(self) -> list[Any]:
        """Every distinct item of the usable classes, in a fixed order."""
        seen: dict[Any, None] = {}
        for c in self.usable_class_ids:
            for item in self.class_items[c]:
                seen.setdefault(item, None)
        return list(seen)

    def files(self) -> Iterator[Path]:
        """Every file the episodes of this split may read."""
        for item in self.items():
            yield from self.item_files(item)


class FileDataModule(EpisodicDataModule):
    """Base of the data modules over image files: the shared episode options plus those of files.

    Args:
        augment: built-in albumentations augmentation of training episodes (:func:`default_augmentation`).
        augment_config: path of an ``albumentations.save``-d pipeline for training (overrides ``augment``).
        resize: how images and masks are resized and normalised, reproducing a reference exactly:
            ``pil`` (HSNet, ASNet, HM: PIL bilinear on the uint8 image) or ``opencv`` (VAT). See
            ``fss/data/transforms.py``.
        episode_order: how val/test episodes are drawn: ``fss`` (independent per-episode generators),
            ``hsnet`` (the test sequence of HSNet's, VAT's and HM's ``test.py``: one legacy NumPy
            generator seeded with ``seed``) or ``asnet`` (ASNet's: one per episode). Training episodes
            always follow ``fss``. See ``fss/data/protocols.py``.
        boundary: label value 255 in query masks (VOC's object boundaries; COCO PNGs' unlabelled
            pixels): ``reference`` (as the references: PASCAL-5i ignores it in val/test and trains on
            it as background, COCO-20i takes it as background), ``ignore`` (ignored everywhere) or
            ``background`` (background everywhere). Support masks never count it as the class.
        val_fraction: ``null``: validation episodes come from the test images, as in the references
            (so the best epoch is chosen on test data); a fraction in (0, 1): that part of the held-out
            images (class-stratified, fixed) is used by validation only and the rest by test.
            FSS-1000 has its own validation classes and ignores it.
        **kwargs: the shared episode options of :class:`~fss.data.base.EpisodicDataModule`.

    Subclasses declare their ``root`` and other own options, pass ``**kwargs`` on, and merge their
    dataset arguments into :meth:`dataset_kwargs`.
    """

    def __init__(
        self,
        augment: bool = False,
        augment_config: str | None = None,
        resize: ResizeMethod = "pil",
        episode_order: EpisodeOrder = "fss",
        boundary: Boundary = "reference",
        val_fraction: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_resize(resize, f"{name} (data.resize)")
        check_episode_order(episode_order, f"{name} (data.episode_order)")
        check_boundary(boundary, f"{name} (data.boundary)")
        check_val_fraction(val_fraction, f"{name} (data.val_fraction)")
        self.augment = augment
        self.augment_config = augment_config
        self.resize: ResizeMethod = resize
        self.episode_order: EpisodeOrder = episode_order
        self.boundary: Boundary = boundary
        self.val_fraction = val_fraction

    def dataset_kwargs(self) -> dict[str, Any]:
        return {
            "augment": self.augment,
            "augment_config": self.augment_config,
            "resize": self.resize,
            "episode_order": self.episode_order,
            "boundary": self.boundary,
            "val_fraction": self.val_fraction,
        }

    def build_dataset(self, split: str, seed: int | None = None) -> EpisodicDataset:
        dataset = super().build_dataset(split, seed)
        if isinstance(dataset, ImageEpisodeDataset):
            dataset.sequence  # noqa: B018 - computed now, before workers and processes copy the dataset
        return dataset
