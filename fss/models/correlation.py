"""Dense cosine correlation between query and support features, stacked per ResNet stage."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5


def cosine_correlation(query_feat: Tensor, support_feat: Tensor) -> Tensor:
    """ReLU'd cosine similarity of every query position with every support position.

    Args:
        query_feat: [N, C, ha, wa].
        support_feat: [N, C, hb, wb].

    Returns:
        [N, ha, wa, hb, wb], values in [0, 1].
    """
    bsz, ch, ha, wa = query_feat.shape
    hb, wb = support_feat.shape[-2:]
    q = query_feat.reshape(bsz, ch, -1)
    s = support_feat.reshape(bsz, ch, -1)
    q = q / (q.norm(dim=1, p=2, keepdim=True) + EPS)
    s = s / (s.norm(dim=1, p=2, keepdim=True) + EPS)
    return torch.bmm(q.transpose(1, 2), s).clamp(min=0).view(bsz, ha, wa, hb, wb)


def multilayer_correlation(
    query_feats: list[Tensor], support_feats: list[Tensor], feat_layers: list[int], layers=(4, 3, 2)
) -> list[Tensor]:
    """One correlation per feature level, stacked by stage, deepest stage first.

    Args:
        query_feats, support_feats: per level [N, C_l, h_l, w_l].
        feat_layers: the ResNet stage of each level (``Backbone.feat_layers``).
        layers: the stages to return, in order.

    Returns:
        For each stage in ``layers``: [N, n_blocks, ha, wa, hb, wb].
    """
    corrs = [cosine_correlation(q, s) for q, s in zip(query_feats, support_feats)]
    return [torch.stack([c for c, lid in zip(corrs, feat_layers) if lid == layer], dim=1) for layer in layers]
