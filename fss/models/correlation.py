"""Dense cosine correlation between query and support features, stacked per ResNet stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-5


def cosine_correlation(query_feat: Tensor, support_feat: Tensor) -> Tensor:
    """ReLU'd cosine similarity of every query position with every support position.

    Always computed in float32, autocast or not: under bf16/fp16 mixed precision the norms and
    the C-long dot products lose 2-3 significant digits and near-zero similarities flip sign
    around the ReLU. The learner that follows runs in the autocast dtype as usual.

    Args:
        query_feat: [N, C, ha, wa].
        support_feat: [N, C, hb, wb].

    Returns:
        [N, ha, wa, hb, wb] float32, values in [0, 1].
    """
    bsz, ch, ha, wa = query_feat.shape
    hb, wb = support_feat.shape[-2:]
    with torch.autocast(query_feat.device.type, enabled=False):
        q = query_feat.reshape(bsz, ch, -1).float()
        s = support_feat.reshape(bsz, ch, -1).float()
        q = q / (q.norm(dim=1, p=2, keepdim=True) + EPS)
        s = s / (s.norm(dim=1, p=2, keepdim=True) + EPS)
        return torch.bmm(q.transpose(1, 2), s).clamp_(min=0).view(bsz, ha, wa, hb, wb)


def multilayer_correlation(
    query_feats: list[Tensor], support_feats: list[Tensor], feat_layers: list[int], layers=(4, 3, 2)
) -> list[Tensor]:
    """One correlation per feature level, stacked by stage, deepest stage first.

    The levels of one stage share their shape, so their features are stacked first and correlated
    with one batched matrix product: the [N, n_blocks, ...] result is written in place instead of
    being copied together from per-level correlations (which are 25x larger than the features at
    400 px).

    Args:
        query_feats, support_feats: per level [N, C_l, h_l, w_l].
        feat_layers: the ResNet stage of each level (``Backbone.feat_layers``).
        layers: the stages to return, in order.

    Returns:
        For each stage in ``layers``: [N, n_blocks, ha, wa, hb, wb].
    """
    stacked = []
    for layer in layers:
        ids = [i for i, lid in enumerate(feat_layers) if lid == layer]
        qs, ss = [query_feats[i] for i in ids], [support_feats[i] for i in ids]
        if len({q.shape for q in qs}) == 1 and len({s.shape for s in ss}) == 1:
            n = len(ids)
            corr = cosine_correlation(
                torch.stack(qs, dim=1).flatten(0, 1), torch.stack(ss, dim=1).flatten(0, 1)
            )
            stacked.append(corr.view(-1, n, *corr.shape[1:]))
        else:  # levels of different shapes (not a ResNet stage): correlate one by one
            stacked.append(torch.stack([cosine_correlation(q, s) for q, s in zip(qs, ss)], dim=1))
    return stacked


def resize_query_dims(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly (``align_corners=True``) resize the query dims of [N, C, ha, wa, hb, wb] to ``size``.

    How HSNet, ASNet and VAT bring a deeper stage's squeezed correlation to the next stage's size.
    """
    bsz, ch, ha, wa, hb, wb = x.shape
    x = x.permute(0, 4, 5, 1, 2, 3).reshape(bsz * hb * wb, ch, ha, wa)
    x = F.interpolate(x, size, mode="bilinear", align_corners=True)
    return x.view(bsz, hb, wb, ch, *size).permute(0, 3, 4, 5, 1, 2)
