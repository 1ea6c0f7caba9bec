"""Swin transformer blocks over 2D feature maps and 4D correlation volumes (used by VAT).

One shifted-window block serves both cases: the input is channels-last ``[B, *res, C]`` with
``len(res)`` = 2 (an image, ``(H, W)``) or 4 (a correlation volume, ``(ha, wa, hb, wb)``). Windows
are cubes of side ``window`` in every spatial dimension; every other block of a layer shifts them
cyclically by ``window // 2`` and masks the attention between tokens that the shift brought together
from opposite borders (Liu et al., "Swin Transformer", ICCV 2021; VAT's 4D extension: Hong et al.,
ECCV 2022). The relative position bias table has ``(2 * window - 1) ** ndim`` rows, one per offset.

Attribute names follow the VAT reference code so that its checkpoints load key for key. The
relative position index and the shift mask are constants derived from the configuration: they are
non-persistent buffers here, and the reference's copies in a checkpoint are skipped when loading.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

#: value the reference adds to the attention logits of token pairs from different shifted regions
SHIFT_MASK_VALUE = -100.0


def window_partition(x: Tensor, window: int) -> Tensor:
    """Split ``x`` [B, *res, C] into windows [B * n_windows, window ** ndim, C] (row-major order)."""
    bsz, *res, ch = x.shape
    ndim = len(res)
    x = x.reshape(bsz, *itertools.chain.from_iterable((r // window, window) for r in res), ch)
    # (B, n_0, w_0, n_1, w_1, ...) -> (B, n_0, n_1, ..., w_0, w_1, ..., C)
    order = [0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1]
    return x.permute(order).reshape(-1, window**ndim, ch)


def window_merge(windows: Tensor, window: int, res: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`window_partition`: [B * n_windows, window ** ndim, C] -> [B, *res, C]."""
    ndim = len(res)
    ch = windows.shape[-1]
    counts = [r // window for r in res]
    x = windows.reshape(-1, *counts, *(window,) * ndim, ch)
    # (B, n_0, n_1, ..., w_0, w_1, ..., C) -> (B, n_0, w_0, n_1, w_1, ..., C)
    order = [0, *itertools.chain.from_iterable((1 + d, 1 + ndim + d) for d in range(ndim)), 2 * ndim + 1]
    return x.permute(order).reshape(-1, *res, ch)


@functools.lru_cache(maxsize=8)
def _relative_position_index(window: int, ndim: int) -> Tensor:
    """Cached body of :func:`relative_position_index` (callers get a copy)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(window)] * ndim, indexing="ij")).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # [N, N, ndim]
    radix = torch.tensor([(2 * window - 1) ** (ndim - 1 - d) for d in range(ndim)])
    return (offsets * radix).sum(-1)


def relative_position_index(window: int, ndim: int) -> Tensor:
    """Row of the bias table for each token pair of a window: [window ** ndim, window ** ndim] long.

    The offset ``d`` between two tokens (per dimension, in ``[-(w-1), w-1]``) is encoded in base
    ``2w - 1`` with the first dimension most significant (as the reference does).
    """
    return _relative_position_index(window, ndim).clone()


def shifted_window_mask(res: tuple[int, ...], window: int, shift: int) -> Tensor:
    """Additive attention mask [n_windows, N, N] for cyclically shifted windows (0 or -100).

    After the shift by ``shift``, each dimension has three regions (``[0, -window)``,
    ``[-window, -shift)``, ``[-shift, end)``); tokens attend only to tokens of the same region
    combination.
    """
    ndim = len(res)
    label = torch.zeros(1, *res, 1)
    regions = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for count, combo in enumerate(itertools.product(regions, repeat=ndim)):
        label[(slice(None), *combo, slice(None))] = count
    windows = window_partition(label, window).squeeze(-1)  # [n_windows, N]
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, SHIFT_MASK_VALUE)


def _drop_state_keys(state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Remove derived buffers that reference checkpoints store (we recompute them)."""
    for name in names:
        state_dict.pop(prefix + name, None)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    Args:
        dim: token channels.
        window: window side (the same in every dimension).
        num_heads: attention heads (``dim`` must be divisible by it).
        ndim: 2 for images, 4 for correlation volumes.

    Shapes: ``x`` [B * n_windows, window ** ndim, dim] and optional ``mask``
    [n_windows, N, N] -> [B * n_windows, window ** ndim, dim].
    """

    def __init__(self, dim: int, window: int, num_heads: int, ndim: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window, self.num_heads, self.ndim = dim, window, num_heads, ndim
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** ndim, num_heads))
        self.register_buffer(
            "relative_position_index", relative_position_index(window, ndim), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.normal_(self.relative_position_bias_table, std=0.02)  # see init_swin_weights

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _drop_state_keys(state_dict, prefix, ("relative_position_index",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        nwb, ntok, ch = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).view(nwb, ntok, 3, heads, ch // heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(ntok, ntok, heads).permute(2, 0, 1)  # [heads, N, N]
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        else:  # windows are the fastest-varying part of the batch: [B, n_windows, heads, N, N]
            nwin = mask.shape[0]
            attn_mask = bias.unsqueeze(0) + mask.unsqueeze(1)  # [n_windows, heads, N, N]
            q, k, v = (t.reshape(nwb // nwin, nwin, heads, ntok, -1) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.reshape(nwb, heads, ntok, -1).transpose(1, 2).reshape(nwb, ntok, ch)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, num_heads={self.num_heads}, ndim={self.ndim}"


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on the last dimension (``fc1``/``fc2`` as in the reference)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP, both residual, on channels-last [B, *res, C].

    Args:
        dim: channels C.
        resolution: spatial size ``res`` of the input (2 or 4 dimensions).
        num_heads: attention heads.
        window: window side; when ``min(resolution) <= window`` the window becomes
            ``min(resolution)`` and the block does not shift (the reference's rule).
        shift: cyclic shift of the windows (0 for a plain window block).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, ...],
        num_heads: int,
        window: int,
        shift: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        if min(self.resolution) <= window:
            window, shift = min(self.resolution), 0
        if any(r % window for r in self.resolution):
            raise ValueError(
                f"Swin block: resolution {self.resolution} is not divisible by the window {window}"
            )
        if not 0 <= shift < window:
            raise ValueError(f"Swin block: shift {shift} must be in [0, window={window})")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, ndim=len(self.resolution))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(self.resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _drop_state_keys(state_dict, prefix, ("attn_mask",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """[B, *res, C] -> [B, *res, C]."""
        if tuple(x.shape[1:-1]) != self.resolution:
            raise ValueError(f"Swin block built for {self.resolution}, got input {tuple(x.shape)}")
        dims = tuple(range(1, x.dim() - 1))
        shifted = self.norm1(x)
        if self.shift:
            shifted = torch.roll(shifted, shifts=(-self.shift,) * len(dims), dims=dims)
        windows = self.attn(window_partition(shifted, self.window), mask=self.attn_mask)
        shifted = window_merge(windows, self.window, self.resolution)
        if self.shift:
            shifted = torch.roll(shifted, shifts=(self.shift,) * len(dims), dims=dims)
        x = x + shifted
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, window={self.window}, shift={self.shift}"


class SwinLayer(nn.Module):
    """``depth`` Swin blocks alternating plain and shifted windows (shift ``window // 2``).

    ``gradient_checkpointing = True`` recomputes each block in the backward pass instead of keeping
    its activations (only while training with autograd enabled).
    """

    def __init__(
        self, dim: int, resolution: tuple[int, ...], depth: int, num_heads: int, window: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window, shift=0 if i % 2 == 0 else window // 2)
            for i in range(depth)
        )
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        """[B, *res, C] -> [B, *res, C]."""
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        return x


def init_swin_weights(module: nn.Module) -> None:
    """The reference initialisation: Linear weights ~ N(0, 0.02), biases 0; LayerNorm 1 / 0.

    The reference truncates the normal at +-2, i.e. at 100 standard deviations, which never happens:
    a plain normal has the same distribution and is much faster than ``trunc_normal_`` on CPU.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _Swin4dBody(nn.Module):
    """One Swin layer over a 4D volume. ``norm`` exists only because the reference has it (its
    forward never uses it): it is frozen so that it never reaches the optimizer or DDP."""

    def __init__(
        self, dim: int, resolution: tuple[int, int, int, int], depth: int, num_heads: int, window: int
    ):
        super().__init__()
        self.layer = SwinLayer(dim, resolution, depth, num_heads, window)
        self.norm = nn.LayerNorm(dim)
        init_swin_weights(self)
        self.norm.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class VolumeSwin(nn.Module):
    """4D Swin transformer over a correlation volume (no outer residual: the caller adds it).

    Args:
        dim: channels of the volume.
        resolution: ``(ha, wa, hb, wb)`` the volume must have.
        depth: number of blocks (alternating plain / shifted windows).
        num_heads, window: attention heads and 4D window side.

    Shapes: [B, dim, ha, wa, hb, wb] -> [B, dim, ha, wa, hb, wb].
    """

    def __init__(
        self, dim: int, resolution: tuple[int, int, int, int], depth: int, num_heads: int, window: int
    ):
        super().__init__()
        self.transformer = _Swin4dBody(dim, resolution, depth, num_heads, window)

    def forward(self, x: Tensor) -> Tensor:
        x = self.transformer(x.permute(0, 2, 3, 4, 5, 1))
        return x.permute(0, 5, 1, 2, 3, 4)


class _Swin2dBody(nn.Module):
    """One Swin layer over an image followed by a LayerNorm (``layers.0`` / ``norm`` as the reference)."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window: int):
        super().__init__()
        self.layers = nn.ModuleList([SwinLayer(dim, resolution, depth, num_heads, window)])
        self.norm = nn.LayerNorm(dim)
        init_swin_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class ImageSwin(nn.Module):
    """Residual 2D Swin transformer: ``x + norm(swin(x))``.

    Args:
        dim: channels; resolution: ``(H, W)``; depth, num_heads, window: as :class:`VolumeSwin`.

    Shapes: [B, dim, H, W] -> [B, dim, H, W].
    """

    def __init__(
        self, dim: int, resolution: tuple[int, int], depth: int = 2, num_heads: int = 4, window: int = 8
    ) -> None:
        super().__init__()
        self.transformer = _Swin2dBody(dim, resolution, depth, num_heads, window)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.permute(0, 2, 3, 1)
        return (tokens + self.transformer(tokens)).permute(0, 3, 1, 2)


def set_gradient_checkpointing(module: nn.Module, enabled: bool) -> None:
    """Switch block-wise gradient checkpointing on or off for every :class:`SwinLayer` in ``module``."""
    for m in module.modules():
        if isinstance(m, SwinLayer):
            m.gradient_checkpointing = enabled


__all__ = [
    "ImageSwin",
    "SwinBlock",
    "SwinLayer",
    "VolumeSwin",
    "WindowAttention",
    "relative_position_index",
    "set_gradient_checkpointing",
    "shifted_window_mask",
    "window_merge",
    "window_partition",
]
