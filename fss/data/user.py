"""Few-shot prediction on the user's own images: a support set with masks and any number of queries.

:class:`UserPredictDataModule` feeds ``fss predict`` (see ``configs/predict.yaml`` and
``docs/predict.md``). The support set is given either as two parallel lists of files
(``support_images`` and their binary masks ``support_masks``) or as a folder ``support_dir`` of
``name.jpg`` + ``name.png`` pairs (any image suffix but ``.png`` for the image, ``.png`` for its
mask); queries as a list ``query_images`` or a folder ``query_dir`` (every image file in it).
Images may have any size: the model sees them resized to ``img_size`` x ``img_size``.

Every query becomes one episode with the same K supports (K = the number of support pairs). The
episode follows the schema of ``fss/data/episode.py`` plus ``query_path`` and ``support_paths``
(the source files, for :class:`fss.visualize.MaskWriter`). There is no ground truth:
``query_mask`` is all zeros, and ``org_query_mask`` is an all-zero placeholder of the query's
original size (uint8, only its shape is read). That placeholder makes the task's ``predict_step``
return each mask at the original size, the resize being applied to the logits before the argmax
(the references' ``use_original_imgsize`` rule), never to a binary mask.

Mask files are read by meaning (:mod:`fss.data.masks`): binary 0/255 or 0/1 masks, anti-aliased
white-on-black masks, and greyscale or palette class-index masks (VOC style: 255 is "void", never
the object; ``support_class`` picks the object's class when a mask holds several). An empty or
ambiguous mask is an error naming the file. Images and masks are read with their EXIF orientation
applied.

Under DDP (``--trainer.devices N``) the queries are split over the processes: each predicts and
writes its own share, every query exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fss.data.base import SupportLabel, check_support_label
from fss.data.episode import Episode, collate_episodes
from fss.data.masks import MaskError, read_mask
from fss.data.sampling import EpisodeSampler
from fss.data.transforms import image_tensor, mask_to_bbox, support_mask_tensor

#: suffixes of the image files found in ``support_dir`` / ``query_dir`` (lower case)
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class UserDataError(ValueError):
    """A user-given support or query file is missing, unreadable or inconsistent (the message says which)."""


# --------------------------------------------------------------------------------------------- files
def _open(path: Path, what: str) -> Image.Image:
    """Open ``path`` (EXIF orientation applied) or raise :class:`UserDataError` naming it."""
    if not path.is_file():
        raise UserDataError(f"{what} {path} does not exist: check the path in the data config")
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserDataError(
            f"cannot read {what} {path} ({err}): give an image file PIL can decode (JPEG, PNG, ...)"
        ) from None


def read_user_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]."""
    return np.array(_open(Path(path), "image").convert("RGB"))  # a writable copy


def read_user_mask(path: str | Path, class_value: int | None = None) -> np.ndarray:
    """A mask file as bool [H, W] of object pixels (see :mod:`fss.data.masks`).

    Raises:
        UserDataError: the file is missing or unreadable, the mask is empty, or ``class_value`` is
            not in it.
    """
    _open(Path(path), "mask")  # missing / unreadable: the same message as for images
    try:
        return read_mask(path, class_value)
    except MaskError as err:
        raise UserDataError(str(err)) from None


def _image_files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise UserDataError(f"{what} {folder} is not a directory: check data.{what} in the config")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pair_support_dir(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """``(images, masks)`` of a support folder of ``name.<jpg|jpeg|...>`` + ``name.png`` pairs."""
    files = _image_files(Path(folder), "support_dir")
    masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
    images = [p for p in files if p.suffix.lower() != ".png"]
    if not images:
        raise UserDataError(
            f"no support images found in {folder}: expected pairs name.jpg (the image) + name.png (its mask)"
        )
    pairs = []
    for img in images:
        mask = masks.pop(img.stem, None)
        if mask is None:
            raise UserDataError(
                f"support image {img} has no mask: add {img.with_suffix('.png')} (a binary mask of the object)"
            )
        pairs.append((img, mask))
    if masks:
        orphan = sorted(masks.values())[0]
        raise UserDataError(
            f"mask {orphan} in support_dir has no image: add {orphan.stem}.jpg next to it, or remove it"
        )
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique with ``_2``, ``_3``, ... (output files are named after them)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        names.append(p.stem if n == 1 else f"{p.stem}_{n}")
    return names


# --------------------------------------------------------------------------------------------- data
class UserEpisodes(Dataset[Episode]):
    """One episode per query, all with the same (already prepared) support set.

    Args:
        query_paths: the query image files.
        support_imgs: [K, 3, S, S] normalised support images.
        support_masks: [K, S, S] binary support masks (boxes with ``support_label="bbox"``).
        support_paths: the K support image files.
        img_size: S.
    """

    def __init__(
        self,
        query_paths: Sequence[Path],
        support_imgs: Tensor,
        support_masks: Tensor,
        support_paths: Sequence[Path],
        img_size: int,
    ) -> None:
        self.query_paths = list(query_paths)
        self.query_names = _unique_names(self.query_paths)
        self.support_imgs = support_imgs
        self.support_masks = support_masks
        self.support_paths = [str(p) for p in support_paths]
        self.support_names = [p.stem for p in support_paths]
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.query_paths)

    def __getitem__(self, index: int) -> Episode:
        path = self.query_paths[index]
        img = read_user_image(path)
        h, w = img.shape[:2]
        size = self.img_size
        return {  # type: ignore[typeddict-unknown-key]
            "query_img": image_tensor(img, size),
            "query_mask": torch.zeros(size, size, dtype=torch.long),  # no ground truth
            "support_imgs": self.support_imgs,
            "support_masks": self.support_masks,
            "class_id": torch.tensor(0, dtype=torch.long),
            "query_name": self.query_names[index],
            "support_names": list(self.support_names),
            "org_query_imsize": torch.tensor([h, w], dtype=torch.long),
            # placeholder carrying the original size: the task predicts at this size
            "org_query_mask": torch.zeros((), dtype=torch.uint8).expand(h, w),
            "query_path": str(path),
            "support_paths": list(self.support_paths),
        }


class UserPredictDataModule(pl.LightningDataModule):
    """Prediction data from the user's files: a support set with masks and query images.

    Give the supports either as ``support_images`` + ``support_masks`` (parallel lists) or as
    ``support_dir``; the queries as ``query_images`` or ``query_dir`` (both may be combined).

    Args:
        support_images: support image files.
        support_masks: their binary mask files (same order, each the size of its image).
        support_dir: a folder of ``name.jpg`` + ``name.png`` (mask) pairs.
        query_images: query image files (any size).
        query_dir: a folder whose image files are all queries.
        img_size: side of the square images the model sees (use the training value).
        batch_size: queries per batch (the supports are shared).
        num_workers: dataloader worker processes.
        support_label: ``mask``, or ``bbox`` to give the model each mask's filled bounding box.
        support_class: the label value of the object in class-index support masks (e.g. 15 for a
            VOC person mask); ``None``: the only class in each mask (all of them, with a warning,
            when a mask holds several).

    Errors (:class:`UserDataError`, one message naming the file and the fix): no supports or no
    queries, a missing or unreadable file, a mask whose size differs from its image, an empty mask.
    """

    #: one "class" (the user's object): the width of the task's metric state
    num_classes: int = 1

    def __init__(
        self,
        support_images: list[str] | None = None,
        support_masks: list[str] | None = None,
        support_dir: str | None = None,
        query_images: list[str] | None = None,
        query_dir: str | None = None,
        img_size: int = 400,
        batch_size: int = 1,
        num_workers: int = 0,
        support_label: SupportLabel = "mask",
        support_class: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_support_label(support_label, f"{name} (data.support_label)")
        if support_class is not None and support_class < 1:
            raise ValueError(
                f"{name}: data.support_class must be a class value >= 1 (or null), got {support_class}"
            )
        if img_size < 8:
            raise ValueError(f"{name}: data.img_size must be at least 8, got {img_size}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"{name}: need data.batch_size >= 1 and data.num_workers >= 0")
        images = [Path(p) for p in support_images or []]
        masks = [Path(p) for p in support_masks or []]
        if len(images) != len(masks):
            raise UserDataError(
                f"{name}: {len(images)} support_images but {len(masks)} support_masks: give one mask per image"
            )
        if support_dir is not None:
            dir_images, dir_masks = pair_support_dir(support_dir)
            images, masks = images + dir_images, masks + dir_masks
        if not images:
            raise UserDataError(
                f"{name}: no support images: set data.support_images + data.support_masks, or data.support_dir"
            )
        queries = [Path(p) for p in query_images or []]
        if query_dir is not None:
            found = _image_files(Path(query_dir), "query_dir")
            if not found:
                raise UserDataError(
                    f"no query images found in {query_dir} (suffixes {', '.join(IMAGE_SUFFIXES)})"
                )
            queries += found
        if not queries:
            raise UserDataError(f"{name}: no query images: set data.query_images or data.query_dir")
        for path in queries:
            if not path.is_file():
                raise UserDataError(f"query image {path} does not exist: check data.query_images")
        self.support_image_paths = images
        self.support_mask_paths = masks
        self.query_paths = queries
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.support_label = support_label
        self.support_class = support_class
        self.dataset: UserEpisodes | None = None

    @property
    def shot(self) -> int:
        """Number of supports K."""
        return len(self.support_image_paths)

    def load_supports(self) -> tuple[Tensor, Tensor]:
        """The support set as the model sees it: images [K, 3, S, S] and masks [K, S, S] (float 0/1)."""
        imgs, masks = [], []
        for img_path, mask_path in zip(self.support_image_paths, self.support_mask_paths):
            img, mask = read_user_image(img_path), read_user_mask(mask_path, self.support_class)
            if mask.shape != img.shape[:2]:
                (h, w), (mh, mw) = img.shape[:2], mask.shape
                raise UserDataError(
                    f"support mask {mask_path} is {mw}x{mh} but its image {img_path} is {w}x{h}: the mask must "
                    "have its image's size (export it again at full size, or resize it with nearest-neighbour)"
                )
            imgs.append(image_tensor(img, self.img_size))
            masks.append(support_mask_tensor(torch.from_numpy(mask.astype(np.int64)), self.img_size))
        support_masks = torch.stack(masks)
        if self.support_label == "bbox":
            support_masks = mask_to_bbox(support_masks)
        return torch.stack(imgs), support_masks

    def setup(self, stage: str | None = None) -> None:
        """Read and check the support set once (queries are read as they are predicted)."""
        if self.dataset is None:
            support_imgs, support_masks = self.load_supports()
            self.dataset = UserEpisodes(
                self.query_paths, support_imgs, support_masks, self.support_image_paths, self.img_size
            )

    def predict_dataloader(self) -> DataLoader:
        self.setup("predict")
        assert self.dataset is not None
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            # each process its share of the queries (in order, every query once, no padding)
            sampler=EpisodeSampler(len(self.dataset), shuffle=False),
            num_workers=self.num_workers,
            collate_fn=collate_episodes,
        )
