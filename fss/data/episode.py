"""The episode schema: what every few-shot data module yields, and how episodes are batched.

One episode (a dataset item, before batching; K shots, H x W = ``img_size`` x ``img_size``):

=====================  ===================  ==========================================================
key                    shape / type         meaning
=====================  ===================  ==========================================================
``query_img``          float [3, H, W]      ImageNet-normalised query image
``query_mask``         long [H, W]          0 background, 1 foreground (the episode's class), 255 ignore
``support_imgs``       float [K, 3, H, W]   K normalised support images
``support_masks``      float [K, H, W]      binary 0/1 masks of the class (ignore pixels -> 0)
``class_id``           long []              global class index (0-based) of the episode's class
``query_name``         str                  an identifier of the query (file stem or synthetic key)
``support_names``      list[str] (K)        identifiers of the supports
``org_query_imsize``   long [2]             the query's original (height, width), before resizing
``org_query_mask``     long [H0, W0]        optional: the query mask at its original size
                                            (only with ``use_original_imgsize``; batch size 1)
``query_classes``      long [H, W]          optional: the query's class map, 0 background, ``c + 1``
                                            for class ``c``, 255 ignore (only with ``data.class_maps``)
``episode_set``        long []              optional: which of several test episode sets the episode
                                            belongs to (only with ``data.test_seeds``)
``gfss_mask``          long [H, W]          optional: the generalized few-shot target, 0 background,
                                            1..C base classes, C + 1 the novel class ``class_id``,
                                            255 ignore (only test episodes with ``data.gfss``)
``org_gfss_mask``      long [H0, W0]        optional: ``gfss_mask`` at the original size (with
                                            ``data.gfss`` and ``use_original_imgsize``)
=====================  ===================  ==========================================================

:func:`collate_episodes` batches B episodes: tensors gain a leading batch dimension (``query_img``
[B, 3, H, W], ``support_masks`` [B, K, H, W], ``class_id`` [B], ``org_query_imsize`` [B, 2], ...),
``query_name`` becomes a list of B strings and ``support_names`` a list of B lists of K strings
(``default_collate`` would transpose the latter into K tuples of B names; FS-CS episodes' N lists of
K names become B lists of N lists, see :mod:`fss.data.fscs`). Tensors whose shapes differ
across the batch (``org_query_mask``) are kept as a list of B tensors.

Note: the reference HSNet code stores ``org_query_imsize`` as PIL's (width, height); here it is
(height, width), the order of tensor shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch
from torch import Tensor
from torch.utils.data import default_collate

#: the keys every episode has (``org_query_mask`` is optional)
EPISODE_KEYS: tuple[str, ...] = (
    "query_img",
    "query_mask",
    "support_imgs",
    "support_masks",
    "class_id",
    "query_name",
    "support_names",
    "org_query_imsize",
)

#: the value marking "ignore" pixels in ``query_mask``
IGNORE_INDEX: int = 255


class _EpisodeRequired(TypedDict):
    query_img: Tensor
    query_mask: Tensor
    support_imgs: Tensor
    support_masks: Tensor
    class_id: Tensor
    query_name: str
    support_names: list[str]
    org_query_imsize: Tensor


class Episode(_EpisodeRequired, total=False):
    """One few-shot episode (see the module docstring for shapes); the last keys are optional."""

    org_query_mask: Tensor
    query_classes: Tensor
    episode_set: Tensor
    gfss_mask: Tensor
    org_gfss_mask: Tensor


class EpisodeBatch(TypedDict, total=False):
    """B collated episodes: tensors with a leading batch dimension, names as lists (B or B x K)."""

    query_img: Tensor
    query_mask: Tensor
    support_imgs: Tensor
    support_masks: Tensor
    class_id: Tensor
    query_name: list[str]
    support_names: list[list[str]]
    org_query_imsize: Tensor
    org_query_mask: Tensor | list[Tensor]
    query_classes: Tensor
    episode_set: Tensor
    gfss_mask: Tensor
    org_gfss_mask: Tensor | list[Tensor]


def check_episode(episode: Episode, shot: int | None = None, img_size: int | None = None) -> None:
    """Raise ``ValueError`` naming the key when ``episode`` does not follow the schema.

    A cheap check for dataset tests and for new dataset implementations.
    """
    missing = [k for k in EPISODE_KEYS if k not in episode]
    if missing:
        raise ValueError(f"episode lacks the keys {missing} (see fss/data/episode.py for the schema)")
    qi, qm, si, sm = (episode[k] for k in ("query_img", "query_mask", "support_imgs", "support_masks"))
    expect = {
        "query_img": (qi, torch.float32, 3),
        "query_mask": (qm, torch.int64, 2),
        "support_imgs": (si, torch.float32, 4),
        "support_masks": (sm, torch.float32, 3),
        "class_id": (episode["class_id"], torch.int64, 0),
        "org_query_imsize": (episode["org_query_imsize"], torch.int64, 1),
    }
    for key, (value, dtype, ndim) in expect.items():
        if not isinstance(value, Tensor) or value.dtype != dtype or value.dim() != ndim:
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"episode[{key!r}] must be a {ndim}-D {dtype} tensor, got {got}")
    h, w = qi.shape[-2:]
    if qi.shape[0] != 3 or qm.shape != (h, w) or si.shape[1:] != (3, h, w) or sm.shape != (si.shape[0], h, w):
        raise ValueError(
            "episode shapes disagree: query_img [3,H,W], query_mask [H,W], support_imgs [K,3,H,W], "
            f"support_masks [K,H,W]; got {tuple(qi.shape)}, {tuple(qm.shape)}, {tuple(si.shape)}, "
            f"{tuple(sm.shape)}"
        )
    if shot is not None and si.shape[0] != shot:
        raise ValueError(f"episode has {si.shape[0]} supports, expected shot={shot}")
    if img_size is not None and (h, w) != (img_size, img_size):
        raise ValueError(f"episode images are {h}x{w}, expected img_size={img_size}")
    if len(episode["support_names"]) != si.shape[0]:
        raise ValueError(
            f"support_names has {len(episode['support_names'])} names for {si.shape[0]} supports"
        )
    values = torch.unique(qm)
    if not bool(torch.isin(values, torch.tensor([0, 1, IGNORE_INDEX])).all()):
        raise ValueError(f"query_mask may hold only 0, 1 and {IGNORE_INDEX}, found {values.tolist()}")
    if not bool(((sm == 0) | (sm == 1)).all()):
        raise ValueError("support_masks must be binary 0/1 (map ignore pixels to 0)")


def _is_names(value: Any) -> bool:
    """A str, or a (nested) list/tuple of str: names are batched as lists, never transposed."""
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and all(_is_names(v) for v in value)


def _as_lists(value: Any) -> Any:
    return value if isinstance(value, str) else [_as_lists(v) for v in value]


def _collate_values(key: str, values: Sequence[Any]) -> Any:
    first = values[0]
    if isinstance(first, Tensor):
        if all(v.shape == first.shape for v in values):
            return default_collate(list(values))
        return list(values)
    if _is_names(first):
        return [_as_lists(v) for v in values]
    return default_collate(list(values))


def collate_episodes(episodes: Sequence[Episode]) -> EpisodeBatch:
    """Batch episodes: stack tensors, keep names as lists (``support_names`` as B lists of K).

    Args:
        episodes: B episodes with the same keys.

    Returns:
        A dict with the same keys: ``query_img`` [B,3,H,W], ``query_mask`` [B,H,W],
        ``support_imgs`` [B,K,3,H,W], ``support_masks`` [B,K,H,W], ``class_id`` [B],
        ``org_query_imsize`` [B,2], ``query_name`` list[str], ``support_names`` list[list[str]];
        ``org_query_mask`` [B,H0,W0] when all sizes agree, else a list of B tensors.
    """
    if not episodes:
        raise ValueError("collate_episodes got an empty batch")
    keys = episodes[0].keys()
    for ep in episodes[1:]:
        if ep.keys() != keys:
            raise ValueError(
                f"episodes in one batch have different keys: {sorted(keys)} vs {sorted(ep.keys())}"
            )
    return {key: _collate_values(key, [ep[key] for ep in episodes]) for key in keys}  # type: ignore[return-value]
