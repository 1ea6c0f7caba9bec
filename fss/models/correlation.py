"""Dense cosine correlation between query and support features, stacked per backbone level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-5


def _rows(feat: Tensor) -> Tensor:
    """[N, C, h, w] -> [N, h*w, C]: free for ``channels_last`` features (the backbone's on CPU)."""
    return feat.permute(0, 2, 3, 1).flatten(1, 2)


def _unit_rows(feats: list[Tensor]) -> Tensor:
    """Levels of features [N, C, h, w] (one shape) -> unit-length rows [N, n_levels, h*w, C], float32.

    Each level is divided by its norms (+ EPS) straight into its slot of the stacked result: one
    pass instead of a normalisation and a stacking copy. The norms reduce over the contiguous
    channel dim of the (channels_last) features.
    """
    first = feats[0]
    if torch.is_grad_enabled() and any(f.requires_grad for f in feats):  # out= does not record autograd
        rows = [_rows(f).float() for f in feats]
        return torch.stack([r / (r.norm(dim=-1, p=2, keepdim=True) + EPS) for r in rows], dim=1)
    out = first.new_empty(
        first.shape[0], len(feats), first.shape[-2:].numel(), first.shape[1], dtype=torch.float32
    )
    for i, feat in enumerate(feats):
        rows = _rows(feat).float()
        torch.div(rows, rows.norm(dim=-1, p=2, keepdim=True) + EPS, out=out[:, i])
    return out


def _correlate_unit_rows(
    q: Tensor,
    s: Tensor,
    query_hw: tuple[int, int],
    support_hw: tuple[int, int],
    query_major: bool = False,
) -> Tensor:
    """Unit rows [N, n, Lq, C] and [N, n, Ls, C] of n levels -> ReLU'd cosines [N, n, ha, wa, hb, wb].

    ``query_major``: the result is stored as [N, ha, wa, n, hb, wb] (a permuted view of it is
    returned), the layout HSNet's first 4D convolution reads without a copy (ignored when the
    rows require gradients: ``out=`` does not record autograd).
    """
    if query_major and not (torch.is_grad_enabled() and (q.requires_grad or s.requires_grad)):
        store = q.new_empty(q.shape[0], q.shape[2], q.shape[1], s.shape[2])  # [N, Lq, n, Ls]
        for i in range(q.shape[0]):  # each level's matrix goes straight to its strided slot
            torch.bmm(q[i], s[i].transpose(1, 2), out=store[i].transpose(0, 1))
        corr = store.clamp_(min=0).transpose(1, 2)
    else:
        corr = torch.matmul(q, s.transpose(-1, -2)).clamp_(min=0)
    return corr.unflatten(-1, tuple(support_hw)).unflatten(2, tuple(query_hw))


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
    with torch.autocast(query_feat.device.type, enabled=False):
        q, s = _unit_rows([query_feat]), _unit_rows([support_feat])
        return _correlate_unit_rows(q, s, query_feat.shape[-2:], support_feat.shape[-2:])[:, 0]


def multilayer_correlation(
    query_feats: list[Tensor],
    support_feats: list[Tensor],
    feat_layers: list[int],
    layers: tuple[int, ...] | None = None,
    query_major: bool = False,
) -> list[Tensor]:
    """One correlation per feature map, stacked by level, deepest level first.

    The maps of one level share their shape, so their features are stacked first and correlated
    with one batched matrix product: the [N, n_maps, ...] result is written in place instead of
    being copied together from per-map correlations (which are 25x larger than the features at
    400 px).

    Args:
        query_feats, support_feats: per map [N, C_l, h_l, w_l].
        feat_layers: the level of each map (``FeatureBackbone.feat_layers``; a ResNet's stage).
        layers: the levels to return, in order; None: every level of ``feat_layers``, deepest first.
        query_major: store each result as [N, ha, wa, n_maps, hb, wb] (see ``_correlate_unit_rows``).

    Returns:
        For each level in ``layers``: [N, n_maps, ha, wa, hb, wb].
    """
    if layers is None:
        layers = tuple(sorted(set(feat_layers), reverse=True))
    stacked = []
    for layer in layers:
        ids = [i for i, lid in enumerate(feat_layers) if lid == layer]
        qs, ss = [query_feats[i] for i in ids], [support_feats[i] for i in ids]
        if len({q.shape for q in qs}) == 1 and len({s.shape for s in ss}) == 1:
            with torch.autocast(qs[0].device.type, enabled=False):
                q, s = _unit_rows(qs), _unit_rows(ss)
                stacked.append(_correlate_unit_rows(q, s, qs[0].shape[-2:], ss[0].shape[-2:], query_major))
        else:  # maps of different shapes in one level: correlate one by one
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
