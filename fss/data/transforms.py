"""Image and mask conversions shared by every dataset: resize, ImageNet normalisation, episode tensors.

Images are resized and normalised exactly as the reference loaders do it, so that a model fed by an
fss data module sees the reference's input tensors bit for bit (``resize``, a data-module option):

* ``pil`` (HSNet, ASNet, HM; the default): the uint8 image is resized with PIL's bilinear filter
  (torchvision's ``Resize`` on a PIL image), converted to float in [0, 1] and ImageNet-normalised
  (torchvision's ``ToTensor`` and ``Normalize``); masks are resized nearest as ``F.interpolate`` does.
* ``opencv`` (VAT): albumentations' ``Resize`` and ``Normalize``: OpenCV's bilinear filter on the
  uint8 image (no anti-aliasing), ``(x - 255 mean) * (1 / (255 std))`` in float32; masks with OpenCV's
  nearest neighbour.

Both normalisations map the 256 possible uint8 values through a per-channel table computed with
the reference's own float32 operations, so they are exact and cheap. Float images (already in
[0, 1]) have no reference pipeline: they are resized bilinearly with anti-aliasing.

Query masks are ``long`` with 0 / 1 / 255 (ignore); support masks are ``float`` 0 / 1 with ignore
pixels set to 0. A mask is resized straight from its own size to ``img_size``, as the references do,
even when it is not the size of its image.

A dataset typically reads its images and label maps, turns each label map into a 0/1/255 target map
with :func:`binarize_label` and hands everything to :func:`build_episode`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fss.data.episode import IGNORE_INDEX, Episode

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: an image as a dataset may hold it: PIL image, uint8 [H,W,3] / [H,W] array, or float [3,H,W] in [0,1]
ImageLike = Union[Image.Image, np.ndarray, Tensor]
#: a label or mask map [H, W] as array or tensor
MaskLike = Union[Image.Image, np.ndarray, Tensor]
Size = Union[int, tuple[int, int]]

#: how images and masks are resized to ``img_size`` (see the module docstring)
ResizeMethod = Literal["pil", "opencv"]
RESIZE_METHODS: tuple[str, ...] = ("pil", "opencv")


def check_resize(resize: str, owner: str) -> None:
    """Raise a ``ValueError`` naming ``owner`` unless ``resize`` is one of :data:`RESIZE_METHODS`."""
    if resize not in RESIZE_METHODS:
        raise ValueError(
            f"{owner}: resize must be 'pil' (HSNet, ASNet, HM) or 'opencv' (VAT), got {resize!r}"
        )


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def to_image_tensor(img: ImageLike) -> Tensor:
    """Convert an image to float [3, H, W] in [0, 1].

    Accepts a PIL image (converted to RGB), a uint8 array [H, W, 3] or [H, W] (grey, repeated), a float
    array [H, W, 3] in [0, 1], or a float tensor [3, H, W] in [0, 1] (returned as float32).
    """
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    if isinstance(img, np.ndarray):
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an image array [H,W,3] or [H,W], got shape {img.shape}")
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        t = t.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        return t.div_(255.0) if img.dtype == np.uint8 else t
    if isinstance(img, Tensor):
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected an image tensor [3,H,W], got {tuple(img.shape)}")
        return img.float().div(255.0) if img.dtype == torch.uint8 else img.float()
    raise TypeError(f"cannot convert {type(img).__name__} to an image tensor")


def to_label_tensor(mask: MaskLike) -> Tensor:
    """Convert a label map (PIL, array or tensor) [H, W] to a long tensor [H, W]."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
        raise ValueError(f"expected a label map [H,W], got {shape}")
    return mask.long()


def resize_image(img: Tensor, size: Size) -> Tensor:
    """Resize float images [3, H, W] or [N, 3, H, W] bilinearly (anti-aliased) to ``size``."""
    size = _pair(size)
    if tuple(img.shape[-2:]) == size:
        return img
    batched = img.dim() == 4
    out = F.interpolate(
        img if batched else img[None], size, mode="bilinear", align_corners=False, antialias=True
    )
    return out if batched else out[0]


def resize_label(mask: Tensor, size: Size, resize: ResizeMethod = "pil") -> Tensor:
    """Resize a label map [H, W] (or [N, H, W]) with nearest-neighbour interpolation; dtype is kept.

    ``resize="pil"`` picks source pixels as ``F.interpolate(mode="nearest")`` does (HSNet's masks),
    ``"opencv"`` as ``cv2.resize(..., INTER_NEAREST)`` (VAT's); the two differ on some rows and
    columns (float32 against float64 scale factors). Values must fit in uint8 for ``opencv``.
    """
    size = _pair(size)
    if tuple(mask.shape[-2:]) == size:
        return mask
    if resize == "opencv":
        import cv2

        flat = mask.reshape(-1, *mask.shape[-2:]).to(torch.uint8).numpy()
        out = np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) for m in flat])
        return torch.from_numpy(out).to(mask.dtype).reshape(*mask.shape[:-2], *size)
    batched = mask.dim() == 3
    m = mask if batched else mask[None]
    out = F.interpolate(m[:, None].float(), size, mode="nearest")[:, 0].to(mask.dtype)
    return out if batched else out[0]


def resize_rgb(img: np.ndarray, size: Size, resize: ResizeMethod = "pil") -> np.ndarray:
    """Resize a uint8 image [H, W, 3] to ``size`` as the reference does (``pil`` or ``opencv`` bilinear)."""
    h, w = _pair(size)
    if img.shape[:2] == (h, w):
        return img
    if resize == "opencv":
        import cv2

        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


@functools.cache
def normalization_table(resize: ResizeMethod = "pil") -> np.ndarray:
    """float32 [3, 256]: the normalised value of each uint8 level per channel, as the reference computes it.

    ``pil``: torchvision's ``ToTensor`` then ``Normalize``, i.e. ``(v / 255 - mean) / std`` in float32
    torch operations; ``opencv``: albumentations' ``Normalize``, ``(v - 255 mean) * (1 / (255 std))``
    in float32.
    """
    if resize == "opencv":
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255
        scale = np.reciprocal(np.asarray(IMAGENET_STD, dtype=np.float32) * 255)
        levels = np.arange(256, dtype=np.float32)
        return ((levels[None] - mean[:, None]) * scale[:, None]).astype(np.float32)
    levels = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1)
    return levels[None].sub(mean).div_(std).numpy()


def normalize_uint8(img: np.ndarray, resize: ResizeMethod = "pil") -> Tensor:
    """ImageNet-normalise a uint8 image [H, W, 3] into float32 [3, H, W] (a table lookup, exact)."""
    import cv2

    table = normalization_table(resize)
    channels = cv2.split(np.ascontiguousarray(img))
    return torch.from_numpy(np.stack([cv2.LUT(channels[c], table[c]) for c in range(3)]))


def normalize_image(img: Tensor) -> Tensor:
    """ImageNet normalisation of images [..., 3, H, W] in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img - mean).div_(std)


def normalize_array_(img: np.ndarray) -> np.ndarray:
    """In-place ImageNet normalisation of a float32 array [..., 3, H, W] in [0, 1] (fast path for
    datasets that render or decode into their own arrays); returns ``img``."""
    img -= np.asarray(IMAGENET_MEAN, dtype=img.dtype).reshape(3, 1, 1)
    img *= (1.0 / np.asarray(IMAGENET_STD, dtype=img.dtype)).reshape(3, 1, 1)
    return img


def denormalize_image(img: Tensor) -> Tensor:
    """Undo :func:`normalize_image` and clamp to [0, 1] (for figures)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img * std + mean).clamp(0.0, 1.0)


def image_tensor(img: ImageLike, size: Size | None, resize: ResizeMethod = "pil") -> Tensor:
    """An image as the model sees it: float [3, size, size], resized and ImageNet-normalised.

    uint8 images (PIL images, uint8 arrays [H, W, 3] or grey [H, W]) follow the reference pipeline
    named by ``resize`` exactly; float images in [0, 1] are resized bilinearly with anti-aliasing.
    """
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an image array [H,W,3] or [H,W], got shape {img.shape}")
        return normalize_uint8(resize_rgb(img, size, resize) if size is not None else img, resize)
    t = to_image_tensor(img)
    return normalize_image(resize_image(t, size) if size is not None else t)


def binarize_label(label: MaskLike, class_value: int, ignore_value: int | None = IGNORE_INDEX) -> Tensor:
    """Target map of one class: 1 where ``label == class_value``, 255 where ``label == ignore_value``, else 0.

    Args:
        label: label map [H, W] (e.g. VOC's SegmentationClassAug, where class ``c`` is ``c + 1``).
        class_value: the label value of the episode's class.
        ignore_value: the label value of ignored pixels, or ``None`` when the source has none.

    Returns:
        long [H, W] with values in {0, 1, 255}.
    """
    label = to_label_tensor(label)
    out = (label == class_value).long()
    if ignore_value is not None:
        out[label == ignore_value] = IGNORE_INDEX
    return out


def query_mask_tensor(target: MaskLike, size: Size | None, resize: ResizeMethod = "pil") -> Tensor:
    """The query mask: long [size, size] in {0, 1, 255} from a target map with those values (or bool)."""
    t = to_label_tensor(target)
    return resize_label(t, size, resize) if size is not None else t


def support_mask_tensor(target: MaskLike, size: Size | None, resize: ResizeMethod = "pil") -> Tensor:
    """A support mask: float [size, size] in {0, 1}; ignore (255) pixels become 0."""
    t = query_mask_tensor(target, size, resize)
    return (t == 1).float()


def image_hw(img: ImageLike) -> tuple[int, int]:
    """(height, width) of a PIL image, an array [H, W(, 3)] or a tensor [3, H, W]."""
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    return int(img.shape[0]), int(img.shape[1])


def build_episode(
    query_img: ImageLike,
    query_target: MaskLike,
    support_imgs: Sequence[ImageLike],
    support_targets: Sequence[MaskLike],
    class_id: int,
    img_size: int,
    query_name: str,
    support_names: Sequence[str],
    keep_original_mask: bool = False,
    resize: ResizeMethod = "pil",
) -> Episode:
    """Assemble an :class:`~fss.data.episode.Episode` from raw images and 0/1/255 target maps.

    Args:
        query_img: the query image at its original size (H0 x W0).
        query_target: its target map in {0, 1, 255} (see :func:`binarize_label`), usually [H0, W0];
            a map of another size is resized straight to ``img_size`` (as the references do).
        support_imgs, support_targets: K support images and their target maps (any sizes).
        class_id: global 0-based class index of the episode.
        img_size: side of the square model input.
        query_name, support_names: identifiers for logging and figures.
        keep_original_mask: also return ``org_query_mask``, the query target at H0 x W0 (resized
            there, nearest, if it has another size), used to evaluate at the original resolution.
        resize: ``pil`` or ``opencv``: whose resizing and normalisation to reproduce (module docstring).

    Returns:
        An episode with ``query_img`` [3,S,S], ``query_mask`` [S,S], ``support_imgs`` [K,3,S,S],
        ``support_masks`` [K,S,S], ``class_id`` [], ``org_query_imsize`` [2] (H0, W0), S = img_size.
    """
    if len(support_imgs) != len(support_targets) or len(support_imgs) != len(support_names):
        raise ValueError(
            f"build_episode got {len(support_imgs)} support images, {len(support_targets)} targets and "
            f"{len(support_names)} names"
        )
    if not support_imgs:
        raise ValueError("build_episode needs at least one support image")
    q_target = to_label_tensor(query_target)
    org_size = image_hw(query_img)
    episode: Episode = {
        "query_img": image_tensor(query_img, img_size, resize),
        "query_mask": query_mask_tensor(q_target, img_size, resize),
        "support_imgs": torch.stack([image_tensor(img, img_size, resize) for img in support_imgs]),
        "support_masks": torch.stack([support_mask_tensor(t, img_size, resize) for t in support_targets]),
        "class_id": torch.tensor(class_id, dtype=torch.long),
        "query_name": query_name,
        "support_names": list(support_names),
        "org_query_imsize": torch.tensor(org_size, dtype=torch.long),
    }
    if keep_original_mask:
        episode["org_query_mask"] = resize_label(q_target, org_size, resize)
    return episode


def mask_to_bbox(mask: Tensor) -> Tensor:
    """Replace each mask by the filled bounding box of its foreground (weak, box-level support labels).

    Foreground is ``mask == 1``: ignore pixels (255) and background never count. All foreground blobs
    of one mask share one box (the tightest box covering all of them); an empty mask stays empty.

    Args:
        mask: [..., H, W] masks, float 0/1 (support masks) or long 0/1/255 (target maps).

    Returns:
        Same shape and dtype: 1 inside each mask's box, 0 elsewhere (ignore pixels are dropped).
    """
    if mask.dim() < 2:
        raise ValueError(f"mask_to_bbox expects masks [..., H, W], got {tuple(mask.shape)}")
    fg = mask == 1
    rows, cols = fg.any(dim=-1), fg.any(dim=-2)  # [..., H], [..., W]

    def between_first_and_last(hit: Tensor) -> Tensor:
        # True from the first to the last True along the last dim (all False when none is True)
        after_first = hit.int().cummax(dim=-1).values.bool()
        before_last = hit.flip(-1).int().cummax(dim=-1).values.flip(-1).bool()
        return after_first & before_last

    box = between_first_and_last(rows)[..., :, None] & between_first_and_last(cols)[..., None, :]
    return box.to(mask.dtype)


def letterbox(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """PFENet's evaluation resize: the longer side to ``size``, aspect kept, both sides floored to a
    multiple of 8, pasted at the top left of a ``size`` x ``size`` canvas.

    Args:
        image: uint8 [H, W, 3]; label: uint8 [H, W] (0 / 1 / 255 or a class map).

    Returns:
        float32 [size, size, 3] in [0, 1] (resized bilinearly in float, black padding) and uint8
        [size, size] (nearest, padding 255 = ignore).
    """
    import cv2

    height, width = label.shape
    ratio = size / max(height, width)
    new_h = size if height >= width else int(height * ratio)
    new_w = size if width > height else int(width * ratio)
    new_h, new_w = max(new_h // 8 * 8, 8), max(new_w // 8 * 8, 8)
    img = cv2.resize(image.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    canvas[:new_h, :new_w] = img / 255.0
    target = np.full((size, size), IGNORE_INDEX, dtype=np.uint8)
    target[:new_h, :new_w] = lab
    return canvas, target


def pad_to_square(label: np.ndarray) -> np.ndarray:
    """A label [H, W] at the top left of a square of its longer side, the rest 255 (PFENet's evaluation
    on the original label: the prediction is resized to that square)."""
    side = max(label.shape)
    out = np.full((side, side), IGNORE_INDEX, dtype=label.dtype)
    out[: label.shape[0], : label.shape[1]] = label
    return out
