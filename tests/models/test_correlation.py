"""The cosine correlation: values computed by hand, layouts, and autograd."""

from __future__ import annotations

import pytest
import torch

from fss.models.correlation import EPS, cosine_correlation, multilayer_correlation

FEAT_LAYERS = [2, 2, 3, 3, 3, 4]


def _naive(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """relu(cos) of every query position with every support position, one pair at a time."""
    out = torch.empty(query.shape[0], *query.shape[-2:], *support.shape[-2:])
    for n in range(query.shape[0]):
        for i in range(query.shape[2]):
            for j in range(query.shape[3]):
                q = query[n, :, i, j]
                s = support[n]
                dots = (q[:, None, None] * s).sum(0)
                norms = (q.norm() + EPS) * (s.norm(dim=0) + EPS)
                out[n, i, j] = (dots / norms).clamp(min=0)
    return out


def _features(n: int, channels_last: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    shapes = {2: (8, 6, 5), 3: (16, 3, 3), 4: (32, 2, 2)}
    feats = [torch.randn(n, *shapes[lid], generator=gen) for lid in FEAT_LAYERS]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    return feats


def test_cosine_correlation_matches_the_definition():
    gen = torch.Generator().manual_seed(0)
    query, support = torch.randn(2, 8, 3, 4, generator=gen), torch.randn(2, 8, 5, 2, generator=gen)
    support[0, :, 1, 1] = 0  # a zero feature (feature masking): correlation 0, not NaN
    corr = cosine_correlation(query, support)
    assert corr.shape == (2, 3, 4, 5, 2)
    torch.testing.assert_close(corr, _naive(query, support), rtol=1e-5, atol=1e-6)
    assert (corr[0, :, :, 1, 1] == 0).all()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("query_major", [False, True])
def test_multilayer_correlation_stacks_stages_in_any_layout(channels_last, query_major):
    query = _features(2, channels_last)
    support = [s[:2] for s in _features(3, channels_last)]  # other values, same batch
    stages = multilayer_correlation(query, support, FEAT_LAYERS, query_major=query_major)
    assert [tuple(s.shape) for s in stages] == [
        (2, 1, 2, 2, 2, 2),
        (2, 3, 3, 3, 3, 3),
        (2, 2, 6, 5, 6, 5),
    ]
    for stage, lid in zip(stages, (4, 3, 2)):
        ids = [i for i, layer in enumerate(FEAT_LAYERS) if layer == lid]
        for level, i in enumerate(ids):
            torch.testing.assert_close(stage[:, level], _naive(query[i], support[i]), rtol=1e-5, atol=1e-6)
    if query_major:  # stored [N, ha, wa, n, hb, wb]: the support-side convolution's input is a view
        assert stages[2].permute(0, 2, 3, 1, 4, 5).is_contiguous()


def test_correlation_of_features_that_require_grad_backpropagates():
    gen = torch.Generator().manual_seed(0)
    query = [torch.randn(1, 8, 3, 3, generator=gen, requires_grad=True) for _ in range(2)]
    support = [torch.randn(1, 8, 3, 3, generator=gen, requires_grad=True) for _ in range(2)]
    (corr,) = multilayer_correlation(query, support, [2, 2], layers=(2,), query_major=True)
    corr.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in query + support)
    # the same values as the no-grad path
    with torch.no_grad():
        (plain,) = multilayer_correlation(query, support, [2, 2], layers=(2,), query_major=True)
    torch.testing.assert_close(corr.detach(), plain)
