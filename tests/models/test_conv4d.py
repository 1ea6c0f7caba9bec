"""Center-pivot 4D convolution against a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fss.models.conv4d import CenterPivotConv4d


def naive_center_pivot(conv: CenterPivotConv4d, x: torch.Tensor) -> torch.Tensor:
    """Loop over every support (query) position and apply conv1 (conv2) to the query (support) slice."""
    bsz, _, ha, wa, hb, wb = x.shape
    sh, sw = conv.support_stride
    w1, b1, w2, b2 = conv.conv1.weight, conv.conv1.bias, conv.conv2.weight, conv.conv2.bias
    p1, p2 = conv.conv1.padding, conv.conv2.padding
    hbo, wbo = range(0, hb, sh), range(0, wb, sw)
    out = torch.zeros(bsz, w1.shape[0], ha, wa, len(hbo), len(wbo))
    for i, y in enumerate(hbo):
        for j, xx in enumerate(wbo):
            out[..., i, j] += F.conv2d(x[..., y, xx], w1, b1, padding=p1)
    for y in range(ha):
        for xx in range(wa):
            out[:, :, y, xx] += F.conv2d(x[:, :, y, xx], w2, b2, stride=(sh, sw), padding=p2)
    return out


@pytest.mark.parametrize(("k", "s"), [(3, 1), (3, 2), (5, 4)])
def test_matches_naive_loop(k, s):
    torch.manual_seed(0)
    conv = CenterPivotConv4d(2, 3, (k,) * 4, (1, 1, s, s), (k // 2,) * 4)
    x = torch.randn(2, 2, 5, 6, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), naive_center_pivot(conv, x), rtol=1e-5, atol=1e-5)


def test_works_for_changing_input_sizes():
    """No index cache: a second input size gives the right shape."""
    conv = CenterPivotConv4d(1, 1, (3,) * 4, (1, 1, 2, 2), (1,) * 4)
    assert conv(torch.randn(1, 1, 4, 4, 8, 8)).shape == (1, 1, 4, 4, 4, 4)
    assert conv(torch.randn(1, 1, 3, 5, 5, 7)).shape == (1, 1, 3, 5, 3, 4)
