"""Integrative few-shot classification and segmentation (FS-CS) episodes: N ways, K shots, any subset.

The FS-CS task (Kang & Cho, "Integrative Few-Shot Learning for Classification and Segmentation",
CVPR 2022) gives N classes with K labelled supports each and asks which of them the query shows
(multi-label classification) and where (an (N+1)-class segmentation with a background). The query
may show any subset of the N classes, including none of them.

Sampling (as the reference loaders of the iFSL code, ``fs-cs/data/{pascal,coco}.py``):

1. the query and "its" class are picked as in the 1-way FS-S episodes of the dataset (PASCAL-5i:
   list entry ``index % len(list)``; COCO-20i: a uniform class, then a uniform image of it;
   synthetic: class ``class_ids[index % n]``);
2. the N support classes are N distinct classes of the split drawn with probability 1/2 for the
   query's class and ``1 / (2 (C - 1))`` for each of the C - 1 others (:func:`draw_support_classes`,
   NumPy's ``choice(..., replace=False, p=p)`` as in the reference), so in a 1-way episode the
   support class is the query's class half of the time, and otherwise the query shows it only if
   the image happens to contain it as well;
3. each support class gets K distinct images holding it, never the query;
4. ``query_class_presence[n]`` is whether any pixel of the query's label map (at its original size)
   belongs to support class n; the query mask is ``n + 1`` on class n's pixels, 0 elsewhere, and
   255 where the dataset marks pixels as ignored (PASCAL's boundaries).

Every draw comes from the episode generator (:func:`fss.data.sampling.episode_rng`), so episodes are a
pure function of ``(seed, split, fold, epoch, index)``, identical for any number of workers or
processes (the reference seeds the global NumPy RNG with the episode index instead). The first draw of
an episode (its query) is the same as in the 1-way FS-S episode of the same index.

One FS-CS episode (N ways, K shots, H x W = ``img_size``):

=========================  ======================  ===================================================
key                        shape / type            meaning
=========================  ======================  ===================================================
``query_img``              float [3, H, W]         ImageNet-normalised query image
``query_mask``             long [H, W]             0 background, n + 1 support class n, 255 ignore
``support_imgs``           float [N, K, 3, H, W]   K normalised support images per way
``support_masks``          float [N, K, H, W]      binary 0/1 masks of way n's class (ignore -> 0)
``support_classes``        long [N]                global 0-based class id of each way
``query_class_presence``   bool [N]                whether the query shows way n's class
``query_name``             str                     identifier of the query
``support_names``          N lists of K str        identifiers of the supports, per way
``org_query_imsize``       long [2]                the query's original (height, width)
``org_query_mask``         long [H0, W0]           optional (``use_original_imgsize``): the query mask
                                                   at its original size
=========================  ======================  ===================================================

:func:`fss.data.episode.collate_episodes` batches them (``support_names`` becomes B lists of N lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fss.data.episode import IGNORE_INDEX
from fss.data.transforms import ResizeMethod, image_tensor, resize_label, support_mask_tensor, to_label_tensor

#: the keys every FS-CS episode has (``org_query_mask`` is optional)
FSCS_EPISODE_KEYS: tuple[str, ...] = (
    "query_img",
    "query_mask",
    "support_imgs",
    "support_masks",
    "support_classes",
    "query_class_presence",
    "query_name",
    "support_names",
    "org_query_imsize",
)


class _FSCSEpisodeRequired(TypedDict):
    query_img: Tensor
    query_mask: Tensor
    support_imgs: Tensor
    support_masks: Tensor
    support_classes: Tensor
    query_class_presence: Tensor
    query_name: str
    support_names: list[list[str]]
    org_query_imsize: Tensor


class FSCSEpisode(_FSCSEpisodeRequired, total=False):
    """One N-way K-shot FS-CS episode (see the module docstring); ``org_query_mask`` is optional."""

    org_query_mask: Tensor


def is_fscs_batch(batch: dict[str, Any]) -> bool:
    """Whether a (batched) episode is an FS-CS one (it has ``query_class_presence``)."""
    return "query_class_presence" in batch


# ------------------------------------------------------------------------------------------ sampling
def support_class_probabilities(class_ids: Sequence[int], query_class: int) -> np.ndarray:
    """float64 [C]: 1/2 for ``query_class``, ``1 / (2 (C - 1))`` for each other class (the reference's p)."""
    n = len(class_ids)
    if query_class not in class_ids:
        raise ValueError(f"query class {query_class} is not one of the split's classes {list(class_ids)}")
    if n == 1:
        return np.ones(1)
    p = np.full(n, 0.5 / (n - 1))
    p[list(class_ids).index(query_class)] = 0.5
    return p


def draw_support_classes(
    rng: np.random.Generator, class_ids: Sequence[int], query_class: int, way: int
) -> list[int]:
    """``way`` distinct classes of ``class_ids`` for the supports, favouring the query's class.

    NumPy's weighted sampling without replacement (the algorithm of the reference's legacy
    ``np.random.choice``) with :func:`support_class_probabilities`; the order is the draw order.

    Raises:
        ValueError: when ``way`` exceeds the number of classes.
    """
    if not 1 <= way <= len(class_ids):
        raise ValueError(
            f"an FS-CS episode needs 1 <= way <= {len(class_ids)} (the classes of the split), got {way}"
        )
    p = support_class_probabilities(class_ids, query_class)
    picks = rng.choice(len(class_ids), size=way, replace=False, p=p)
    return [int(class_ids[int(i)]) for i in picks]


# ------------------------------------------------------------------------------------------ targets
def merge_query_targets(targets: Sequence[np.ndarray]) -> np.ndarray:
    """The (N+1)-class query target from N per-class 0/1/255 target maps of the query.

    Args:
        targets: N uint8 maps [H, W], one per way: 1 on the way's class, 255 on ignored pixels.

    Returns:
        uint8 [H, W]: ``n + 1`` where way n's target is 1 (the first way wins where several overlap,
        which semantic label maps never do), else 255 where any target is 255, else 0.
    """
    if not targets:
        raise ValueError("merge_query_targets needs at least one target map")
    shape = targets[0].shape
    out = np.zeros(shape, dtype=np.uint8)
    for t in targets:
        if t.shape != shape:
            raise ValueError(f"query target maps differ in size: {shape} vs {t.shape}")
        out[t == IGNORE_INDEX] = IGNORE_INDEX
    for n in reversed(range(len(targets))):
        out[targets[n] == 1] = n + 1
    return out


def class_presence(target: np.ndarray | Tensor, way: int) -> list[bool]:
    """Whether an (N+1)-class target [H, W] shows way n's class (value ``n + 1``), for n < ``way``."""
    values = set(np.unique(np.asarray(target)).tolist())
    return [n + 1 in values for n in range(way)]


def _image_size(img: Any) -> tuple[int, int]:
    """(height, width) of a PIL image, an array [H, W(, 3)] or a tensor [3, H, W]."""
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    return int(img.shape[0]), int(img.shape[1])


def build_fscs_episode(
    query_img: Any,
    query_target: np.ndarray | Tensor,
    support_imgs: Sequence[Sequence[Any]],
    support_targets: Sequence[Sequence[Any]],
    support_classes: Sequence[int],
    img_size: int,
    query_name: str,
    support_names: Sequence[Sequence[str]],
    keep_original_mask: bool = False,
    resize: ResizeMethod = "pil",
) -> FSCSEpisode:
    """Assemble an :class:`FSCSEpisode` from raw images and target maps.

    Args:
        query_img: the query image at its original size (uint8 [H0, W0, 3], PIL, or float [3, H0, W0]).
        query_target: its (N+1)-class target [H0, W0] in {0..N, 255} (:func:`merge_query_targets`);
            ``query_class_presence`` is read from it (:func:`class_presence`).
        support_imgs, support_targets: N lists of K images and their 0/1/255 target maps of way n's class.
        support_classes: N distinct global class ids.
        img_size: side of the square model input.
        query_name, support_names: identifiers (N lists of K support names).
        keep_original_mask: also return ``org_query_mask`` (the target at its own size).
        resize: ``pil`` or ``opencv``: whose resizing and normalisation to reproduce
            (:func:`fss.data.transforms.build_episode`).
    """
    way = len(support_classes)
    if not (len(support_imgs) == len(support_targets) == len(support_names) == way) or way == 0:
        raise ValueError(
            f"build_fscs_episode: {way} support classes but {len(support_imgs)} image lists, "
            f"{len(support_targets)} target lists and {len(support_names)} name lists"
        )
    shots = {len(imgs) for imgs in support_imgs} | {len(ts) for ts in support_targets}
    if len(shots) != 1 or 0 in shots:
        raise ValueError(f"build_fscs_episode: every way needs the same number (>= 1) of shots, got {shots}")
    target = to_label_tensor(query_target)
    episode: FSCSEpisode = {
        "query_img": image_tensor(query_img, img_size, resize),
        "query_mask": resize_label(target, img_size, resize),
        "support_imgs": torch.stack(
            [torch.stack([image_tensor(img, img_size, resize) for img in imgs]) for imgs in support_imgs]
        ),
        "support_masks": torch.stack(
            [torch.stack([support_mask_tensor(t, img_size, resize) for t in ts]) for ts in support_targets]
        ),
        "support_classes": torch.tensor(list(support_classes), dtype=torch.long),
        "query_class_presence": torch.tensor(class_presence(target, way), dtype=torch.bool),
        "query_name": query_name,
        "support_names": [list(names) for names in support_names],
        "org_query_imsize": torch.tensor(_image_size(query_img), dtype=torch.long),
    }
    if keep_original_mask:
        episode["org_query_mask"] = target
    return episode


def make_image_fscs_episode(dataset: Any, rng: np.random.Generator, index: int, way: int) -> FSCSEpisode:
    """FS-CS episode ``index`` of a file dataset (:class:`fss.data.common.ImageEpisodeDataset`).

    Draws, in this order: the query (the dataset's ``pick_query``), the ``way`` support classes among
    its usable classes, ``shot`` supports per class (``draw_supports``: distinct, never the query),
    then the augmentation seeds (training with augmentation only). The query target merges the
    dataset's per-class targets of the query (``load_target``); under augmentation the query image and
    its (N+1)-class target are transformed together and the presence is read after it.
    """
    from fss.data.common import match_size  # common imports this module

    query, query_class = dataset.pick_query(rng, index)
    classes = draw_support_classes(rng, dataset.usable_class_ids, query_class, way)
    supports = [dataset.draw_supports(rng, c, query) for c in classes]
    image = dataset.load_image(query)
    target = merge_query_targets([dataset.load_target(query, c, True) for c in classes])
    if dataset.augmenter.enabled:
        image, target = dataset.augmenter(rng, image, match_size(target, image))
    pairs = [
        [dataset.load_pair(item, c, False, rng) for item in items] for c, items in zip(classes, supports)
    ]
    return build_fscs_episode(
        image,
        target,
        [[img for img, _ in row] for row in pairs],
        [[tgt for _, tgt in row] for row in pairs],
        classes,
        img_size=dataset.img_size,
        query_name=dataset.item_name(query),
        support_names=[[dataset.item_name(item) for item in items] for items in supports],
        keep_original_mask=dataset.use_original_imgsize,
        resize=getattr(dataset, "resize", "pil"),
    )


# ------------------------------------------------------------------------------------------ checks
def check_fscs_episode(
    episode: dict[str, Any], way: int | None = None, shot: int | None = None, img_size: int | None = None
) -> None:
    """Raise ``ValueError`` naming the key when ``episode`` does not follow the FS-CS schema."""
    missing = [k for k in FSCS_EPISODE_KEYS if k not in episode]
    if missing:
        raise ValueError(f"FS-CS episode lacks the keys {missing} (see fss/data/fscs.py for the schema)")
    qi, qm, si, sm = (episode[k] for k in ("query_img", "query_mask", "support_imgs", "support_masks"))
    cls, presence = episode["support_classes"], episode["query_class_presence"]
    expect = {
        "query_img": (qi, torch.float32, 3),
        "query_mask": (qm, torch.int64, 2),
        "support_imgs": (si, torch.float32, 5),
        "support_masks": (sm, torch.float32, 4),
        "support_classes": (cls, torch.int64, 1),
        "query_class_presence": (presence, torch.bool, 1),
        "org_query_imsize": (episode["org_query_imsize"], torch.int64, 1),
    }
    for key, (value, dtype, ndim) in expect.items():
        if not isinstance(value, Tensor) or value.dtype != dtype or value.dim() != ndim:
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"episode[{key!r}] must be a {ndim}-D {dtype} tensor, got {got}")
    n, k = si.shape[:2]
    h, w = qi.shape[-2:]
    if qm.shape != (h, w) or si.shape[2:] != (3, h, w) or sm.shape != (n, k, h, w):
        raise ValueError(
            "episode shapes disagree: query_img [3,H,W], query_mask [H,W], support_imgs [N,K,3,H,W], "
            f"support_masks [N,K,H,W]; got {tuple(qi.shape)}, {tuple(qm.shape)}, {tuple(si.shape)}, "
            f"{tuple(sm.shape)}"
        )
    if cls.shape != (n,) or presence.shape != (n,):
        raise ValueError(
            f"support_classes {tuple(cls.shape)} and query_class_presence {tuple(presence.shape)} "
            f"must both be [N={n}]"
        )
    if len(set(cls.tolist())) != n:
        raise ValueError(f"support_classes must be distinct, got {cls.tolist()}")
    if way is not None and n != way:
        raise ValueError(f"episode has {n} ways, expected way={way}")
    if shot is not None and k != shot:
        raise ValueError(f"episode has {k} shots per way, expected shot={shot}")
    if img_size is not None and (h, w) != (img_size, img_size):
        raise ValueError(f"episode images are {h}x{w}, expected img_size={img_size}")
    names = episode["support_names"]
    if len(names) != n or any(len(row) != k for row in names):
        raise ValueError(f"support_names must be {n} lists of {k} names")
    allowed = torch.tensor([*range(n + 1), IGNORE_INDEX])
    values = torch.unique(qm)
    if not bool(torch.isin(values, allowed).all()):
        raise ValueError(f"query_mask may hold only 0..{n} and {IGNORE_INDEX}, found {values.tolist()}")
    if not bool(((sm == 0) | (sm == 1)).all()):
        raise ValueError("support_masks must be binary 0/1 (map ignore pixels to 0)")
    shown = [c for c in range(1, n + 1) if bool((qm == c).any())]
    if any(not bool(presence[c - 1]) for c in shown):
        raise ValueError(
            f"query_mask shows ways {[c - 1 for c in shown]} that query_class_presence "
            f"{presence.tolist()} marks absent"
        )
