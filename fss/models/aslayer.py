"""Attentive squeeze layers (ASNet, Kang & Cho, CVPR 2022).

An attentive squeeze layer treats a 4D correlation [N, C, ha, wa, hb, wb] as ``ha * wa`` small
images of the *support* dimensions (hb x wb). For every query position it runs a global
self-attention over the support positions whose queries come from a strided convolution, so
the support dimensions shrink ("squeeze"); keys at support positions outside the support mask
are masked out. A pointwise feed-forward block follows. Both sub-blocks are residual and end in
a GroupNorm.

Parameter names follow the reference implementation (``attn.short_cut``, ``attn.qhead`` ..,
``ff.ff``, ``ff.out_norm``) so that its checkpoints load key for key.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from fss.models.conv import Conv3d

#: logit given to keys outside the support mask (the reference's value)
MASKED_LOGIT = -1e9


def _keeps_size(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> bool:
    """The reference's test for an identity shortcut.

    Equal channels and ``floor((2 * padding - kernel_size) / stride) == -1``. For stride 1 this
    is "the convolution keeps the spatial size"; for larger strides it is not, but every layer
    of the published learner has stride 1 where the channels are equal, and the test decides
    which parameters exist, so it is kept verbatim.
    """
    return in_channels == out_channels and math.floor((2 * padding - kernel_size) / stride) == -1


def support_key_mask(support_mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Which keys the attention may look at.

    Args:
        support_mask: [N, H, W] binary support masks.
        size: (hk, wk) spatial size of the keys.

    Returns:
        bool [N, 1, 1, 1, hk * wk]: ``False`` where the mask, resized bilinearly with
        ``align_corners=True``, is exactly 0.
    """
    mask = F.interpolate(support_mask.unsqueeze(1).float(), size, mode="bilinear", align_corners=True)
    return (mask != 0).flatten(1).view(mask.shape[0], 1, 1, 1, -1)


class Attention(nn.Module):
    """Masked global self-attention over the support dimensions, with a strided query embedding.

    Args:
        in_channels, out_channels: channels of the input / output correlation features.
        kernel_size, stride, padding: the (support-dimension) convolution of the query embedding
            and of the shortcut; with ``pool_kv`` the keys and values use it too (else 1x1).
        heads: attention heads (``out_channels // 2`` must be divisible by it).
        groups: GroupNorm groups.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        bias: bool = True,
        heads: int = 8,
        groups: int = 4,
        pool_kv: bool = False,
    ) -> None:
        super().__init__()
        hidden = out_channels // 2
        if hidden % heads:
            raise ValueError(f"out_channels // 2 = {hidden} must be divisible by heads = {heads}")
        self.heads = heads
        conv_q = {"kernel_size": (1, kernel_size, kernel_size), "stride": (1, stride, stride)}
        conv_q["padding"] = (0, padding, padding)
        conv_kv = conv_q if pool_kv else {"kernel_size": 1, "stride": 1, "padding": 0}

        if _keeps_size(in_channels, out_channels, kernel_size, stride, padding):
            self.short_cut: nn.Module = nn.Identity()
        else:
            self.short_cut = nn.Sequential(
                Conv3d(in_channels, out_channels, bias=False, **conv_q),
                nn.GroupNorm(groups, out_channels),
                nn.ReLU(inplace=True),
            )
        self.qhead = Conv3d(in_channels, hidden, bias=bias, **conv_q)
        self.khead = Conv3d(in_channels, hidden, bias=bias, **conv_kv)
        self.vhead = Conv3d(in_channels, hidden, bias=bias, **conv_kv)
        self.agg = nn.Sequential(
            nn.GroupNorm(groups, hidden),
            nn.ReLU(inplace=True),
            Conv3d(hidden, out_channels, kernel_size=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )
        self.out_norm = nn.GroupNorm(groups, out_channels)

    def forward(self, x: Tensor, support_mask: Tensor) -> Tensor:
        """[N, C_in, T, hb, wb] (T = query positions), mask [N, H, W] -> [N, C_out, T, hq, wq]."""
        shortcut = self.short_cut(x)
        q, k, v = self.qhead(x), self.khead(x), self.vhead(x)
        bsz, hidden, t, hq, wq = q.shape
        key_size = k.shape[-2:]
        # channels are split head-major, (heads, c), as in the reference
        q, k, v = (y.view(bsz, self.heads, hidden // self.heads, t, -1) for y in (q, k, v))  # [N, G, c, T, L]
        # [N, G, T, Lq, Lk], unscaled as in the reference; masked and normalised in float32 under
        # mixed precision (MASKED_LOGIT overflows float16, and CUDA autocast runs softmax in float32)
        logits = (q.permute(0, 1, 3, 4, 2) @ k.transpose(2, 3)).float()
        logits = logits.masked_fill(~support_key_mask(support_mask, key_size), MASKED_LOGIT)
        attn = logits.softmax(dim=-1).to(v.dtype)
        out = attn @ v.permute(0, 1, 3, 4, 2)  # [N, G, T, Lq, c]
        out = out.permute(0, 1, 4, 2, 3).reshape(bsz, hidden, t, hq, wq)
        return self.out_norm(self.agg(out) + shortcut)


class FeedForward(nn.Module):
    """Residual pointwise MLP (channels -> channels // 2 -> channels) followed by a GroupNorm."""

    def __init__(self, channels: int, groups: int = 4, reduction: int = 2) -> None:
        super().__init__()
        hidden = channels // reduction
        self.ff = nn.Sequential(
            Conv3d(channels, hidden, kernel_size=1, bias=False),
            nn.GroupNorm(groups, hidden),
            nn.ReLU(inplace=True),
            Conv3d(hidden, channels, kernel_size=1, bias=False),
        )
        self.out_norm = nn.GroupNorm(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, T, h, w] -> [N, C, T, h, w]."""
        return self.out_norm(self.ff(x) + x)


class AttentiveSqueezeLayer(nn.Module):
    """Masked attention (squeezing the support dimensions) followed by a feed-forward block.

    Args: as :class:`Attention`; the padding of the reference learner is ``kernel_size // 2``
    for kernels above 2, else 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        bias: bool = True,
        heads: int = 8,
        groups: int = 4,
        pool_kv: bool = False,
    ) -> None:
        super().__init__()
        self.attn = Attention(
            in_channels, out_channels, kernel_size, stride, padding, bias, heads, groups, pool_kv
        )
        self.ff = FeedForward(out_channels, groups)

    def forward(self, x: Tensor, support_mask: Tensor) -> Tensor:
        """Correlation [N, C_in, ha, wa, hb, wb], mask [N, H, W] -> [N, C_out, ha, wa, hb', wb']."""
        bsz, _, ha, wa, hb, wb = x.shape
        out = self.ff(self.attn(x.flatten(2, 3), support_mask))
        return out.unflatten(2, (ha, wa))
