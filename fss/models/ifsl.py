"""The iFSL head (Kang & Cho, CVPR 2022): N-way class presence and (N+1)-class segmentation from the
per-way foreground/background logits of any few-shot segmenter, and its two losses.

Given learner logits ``[B, N, 2, h, w]`` of the query against each of the N ways (at the learner's
resolution, before any upsampling), as the reference ``fs-cs/model/ifsl.py`` computes them:

* per-way log-probabilities: ``log_softmax`` over the (background, foreground) pair;
* class presence of way n: ``max_{x} log p_fg(x) >= log 0.5`` (read at the learner's resolution);
* (N+1)-class log-probabilities: the background is the mean over ways of ``log p_bg``, class n + 1
  is ``log p_fg`` of way n; they are upsampled bilinearly (``align_corners=True``) to the target size
  and the prediction is their argmax;
* K shots: each shot is run alone; a class is present when at least half of the shots say so, the
  segmentation is the argmax of the mean of the shots' upsampled (N+1)-class log-probabilities;
* L_S (segmentation, with masks): NLL of the (N+1)-class log-probabilities against the query mask;
  L_C (classification, class tags only): NLL of the spatial mean of each way's log-probabilities
  against the presence labels, averaged over the ways (the reference's 1-way form, extended).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fss.data.episode import IGNORE_INDEX

if TYPE_CHECKING:
    from fss.models.base import FewShotSegmenter

#: ``log 0.5``: the presence threshold on the foreground log-probability
LOG_HALF = math.log(0.5)


def way_log_probs(logits: Tensor) -> Tensor:
    """Log-probabilities ``log_softmax`` over the (background, foreground) dimension of ``[..., 2, h, w]``."""
    if logits.dim() < 3 or logits.shape[-3] != 2:
        raise ValueError(f"expected logits [..., 2, h, w], got {tuple(logits.shape)}")
    return torch.log_softmax(logits, dim=-3)


def presence_from_log_probs(log_probs: Tensor) -> Tensor:
    """Class presence [..., N] (bool) from way log-probabilities [..., N, 2, h, w]: the peak foreground
    log-probability reaches ``log 0.5``."""
    return log_probs[..., 1, :, :].amax(dim=(-1, -2)) >= LOG_HALF


def merge_ways(log_probs: Tensor) -> Tensor:
    """(N+1)-class log-probabilities [..., N+1, h, w] from way log-probabilities [..., N, 2, h, w]:
    the episode's background is the mean of the ways' background log-probabilities."""
    background = log_probs[..., 0, :, :].mean(dim=-3, keepdim=True)
    return torch.cat([background, log_probs[..., 1, :, :]], dim=-3)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (``align_corners=True``) resize of maps ``[..., C, h, w]`` to ``size`` (no-op when equal)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    flat = F.interpolate(maps.reshape(-1, *maps.shape[-3:]), tuple(size), mode="bilinear", align_corners=True)
    return flat.view(*maps.shape[:-2], *flat.shape[-2:])


def aggregate_shots(presence: Tensor, merged: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's K-shot rule.

    Args:
        presence: [B, K, N] per-shot presence (bool).
        merged: [B, K, N+1, H, W] per-shot (N+1)-class log-probabilities at the output size.

    Returns:
        presence [B, N] (bool: at least half of the shots), prediction [B, H, W] (long: argmax of the
        mean over shots).
    """
    if presence.shape[1] == 1:
        return presence[:, 0], merged[:, 0].argmax(dim=1)
    return presence.float().mean(dim=1) >= 0.5, merged.mean(dim=1).argmax(dim=1)


def segmentation_loss(merged: Tensor, target: Tensor) -> Tensor:
    """L_S: mean NLL of (N+1)-class log-probabilities [B, N+1, H, W] against ``target`` [B, H, W] in
    {0..N, 255}; 255 pixels are left out (0 when every pixel is ignored, never NaN)."""
    total = F.nll_loss(merged, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)


def classification_loss(log_probs: Tensor, presence: Tensor) -> Tensor:
    """L_C: NLL of each way's spatially averaged log-probabilities [B, N, 2] against ``presence``
    [B, N], averaged over episodes and ways (for N = 1 the reference's loss)."""
    mean = log_probs.mean(dim=(-1, -2))  # [B, N, 2]
    return F.nll_loss(mean.flatten(0, 1), presence.flatten().long())


# -- running a few-shot segmenter on FS-CS episodes ---------------------------------------------------
SupportMaskValues = Literal["binary", "way_index"]


def way_index_masks(support_masks: Tensor) -> Tensor:
    """Support masks [B, N, K, H, W] with way n's 0/1 mask scaled to hold ``n + 1``.

    The iFSL reference loaders hand way n's support masks over with the value n + 1 (the query label
    of that class), and its models use them as they are: feature masking multiplies way n's features
    by n + 1, input masking its image. Only this reproduces its N > 1-way numbers exactly.
    """
    way = support_masks.shape[1]
    scale = torch.arange(1, way + 1, dtype=support_masks.dtype, device=support_masks.device)
    return support_masks * scale.view(1, way, *([1] * (support_masks.dim() - 2)))


def episode_way_logits(
    net: FewShotSegmenter,
    query_img: Tensor,
    support_imgs: Tensor,
    support_masks: Tensor,
    way_classes: Tensor | None = None,
) -> Tensor:
    """Learner logits of the query against every way of an FS-CS episode, at the learner's resolution.

    Checks the shapes and runs the network's :meth:`~fss.models.base.FewShotSegmenter.way_logits`:
    each way is an FS-S episode of K shots, the ways independent of each other. The default (every
    model built on ``masked_features`` + ``fuse_shots``) makes one backbone call for the query (once,
    whatever N and K) and all N x K supports; BAM and NTRENet run their own forward on the B x N
    episodes, the query's backbone features also computed once.

    Args:
        net: any :class:`~fss.models.base.FewShotSegmenter`.
        query_img: [B, 3, H, W].
        support_imgs: [B, N, K, 3, H', W'].
        support_masks: [B, N, K, H', W'] (0/1, or way-index values, see :func:`way_index_masks`).
        way_classes: [B, N] global class ids of the ways (the batch's ``support_classes``), in
            training only: BAM leaves each way's class out of its base learner's map, as it leaves
            the episode's class out in FS-S training.

    Returns:
        [B, N, S, 2, h, w] (S = K per-shot maps, or 1 for a model that fuses its shots).
    """
    if (
        support_imgs.dim() != 6
        or support_masks.dim() != 5
        or support_imgs.shape[:3] != support_masks.shape[:3]
    ):
        raise ValueError(
            "FS-CS episodes need support_imgs [B,N,K,3,H,W] and support_masks [B,N,K,H,W], got "
            f"{tuple(support_imgs.shape)} and {tuple(support_masks.shape)} (data.fscs: true gives them)"
        )
    if way_classes is not None and way_classes.shape != support_masks.shape[:2]:
        raise ValueError(
            f"way_classes must be [B, N] = {tuple(support_masks.shape[:2])}, got {tuple(way_classes.shape)}"
        )
    return net.way_logits(query_img, support_imgs, support_masks.float(), way_classes)


class FSCSPrediction(NamedTuple):
    """What the iFSL head makes of an FS-CS episode's way logits (see :func:`predict_episode`)."""

    #: [B, N, S, 2, h, w] per-way (background, foreground) log-probabilities at the learner's resolution
    log_probs: Tensor
    #: [B, N] bool: class presence (at least half of the S maps say so)
    presence: Tensor
    #: [B, N+1, H, W] the (N+1)-class log-probabilities at the output size, mean over the S maps
    merged: Tensor
    #: [B, H, W] long: the (N+1)-class prediction (argmax of ``merged``)
    mask: Tensor


def predict_episode(way_logits: Tensor, size: tuple[int, int]) -> FSCSPrediction:
    """The iFSL head on way logits [B, N, S, 2, h, w]: presence, (N+1)-class log-probabilities at
    ``size`` and the predicted mask (the reference's 1-shot path for S = 1, its K-shot rule else)."""
    log_probs = way_log_probs(way_logits)
    per_map = log_probs.transpose(1, 2)  # [B, S, N, 2, h, w]
    presence = presence_from_log_probs(per_map)  # [B, S, N]
    merged = upsample(merge_ways(per_map), size)  # [B, S, N+1, H, W]
    presence, mask = aggregate_shots(presence, merged)
    return FSCSPrediction(log_probs, presence, merged.mean(dim=1), mask)


def predict_mask_at(log_probs: Tensor, size: tuple[int, int]) -> Tensor:
    """(N+1)-class prediction [B, H, W] at ``size`` from way log-probabilities [B, N, S, 2, h, w]
    (the mean of the S maps' resized (N+1)-class log-probabilities, as :func:`predict_episode`)."""
    return upsample(merge_ways(log_probs.transpose(1, 2)), size).mean(dim=1).argmax(dim=1)
