"""Device-specific speed paths, in one place, apart from what the models compute.

Nothing here changes a value (beyond float rounding); each path is measured in
docs/performance.md and tested against the plain path:

* :func:`cpu_channels_last`: on CPU, from ``min_pixels`` input pixels on, convolutional backbones
  run in ``torch.channels_last`` memory format (oneDNN's convolutions and max pool are faster in it
  at these sizes: ResNet-50, 3 images, one thread, 1.10-1.13x at 320-400 px but 0.8x at 96-128 px),
  and the correlation then reads the features as [N, h*w, C] rows without a copy.
* :func:`runs_per_shot` / :func:`per_shot_logits`: on CPU, at inference, from a model's
  ``cpu_per_shot_min_pixels`` query pixels on, a per-shot model (one that does not fuse its shots)
  processes its K shots one at a time, the query's features still computed once.

The layout the correlation writes for HSNet's first 4D convolution (``query_major``) stays with
the correlation (fss/models/correlation.py): it is how that kernel stores its result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from fss.models.base import FewShotSegmenter

#: CPU inputs with at least this many pixels run convolutional backbones in channels_last
CHANNELS_LAST_MIN_PIXELS = 224 * 224
#: the default ``FewShotSegmenter.cpu_per_shot_min_pixels`` (320 x 320)
PER_SHOT_MIN_PIXELS = 320 * 320


def cpu_channels_last(img: Tensor, min_pixels: int | None = CHANNELS_LAST_MIN_PIXELS) -> Tensor:
    """``img`` [N, 3, H, W] in channels_last when on CPU with at least ``min_pixels`` pixels, else as is.

    The features computed from it are logically the same [N, C, h, w] tensors; use ``.reshape``, not
    ``.view``, on them.
    """
    if min_pixels is not None and img.device.type == "cpu" and img.shape[-2:].numel() >= min_pixels:
        return img.contiguous(memory_format=torch.channels_last)
    return img


def runs_per_shot(model: FewShotSegmenter, query_img: Tensor) -> bool:
    """Whether ``model.forward_shots`` takes the CPU per-shot inference path for ``query_img`` [B, 3, H, W].

    Only per-shot models (``fuses_shots`` False), on CPU, without autograd, from the model's
    ``cpu_per_shot_min_pixels`` on (None: never).
    """
    limit = model.cpu_per_shot_min_pixels
    return (
        not model.fuses_shots
        and limit is not None
        and query_img.device.type == "cpu"
        and not torch.is_grad_enabled()
        and query_img.shape[-2:].numel() >= limit
    )


def per_shot_logits(
    model: FewShotSegmenter, query_img: Tensor, support_imgs: Tensor, masks: Tensor
) -> Tensor:
    """Logits [B, K, 2, h, w] of a per-shot model, one shot at a time.

    Args:
        query_img: [B, 3, H, W]; support_imgs [B, K, 3, H', W']; masks [B, K, H', W'] float.

    The query's features are still computed once (with the first shot, in one backbone call). On a
    CPU, a backbone call of 3 images and a learner call of one pair keep their activations in the
    caches: at 400 px, ResNet-50, 11 images in one backbone call took 3.5 s against 3.05 s in calls
    of at most 3, and 5 learner pairs in one call 4.5 s against 3.75 s one by one
    (docs/performance.md). Every per-shot learner treats each pair on its own (GroupNorm /
    LayerNorm, no batch statistics), so the values are those of the batched path.
    """
    query_feats, support_feats = model.masked_features(query_img, support_imgs[:, 0], masks[:, 0])
    logits = [model.predict_logits(query_feats, support_feats, masks[:, 0])]
    for k in range(1, support_imgs.shape[1]):
        _, support_feats = model.masked_features(None, support_imgs[:, k], masks[:, k])
        logits.append(model.predict_logits(query_feats, support_feats, masks[:, k]))
    return torch.stack(logits, dim=1)
