"""2D/3D convolutions that dodge a CPU bf16 bug: drop-in ``nn.Conv2d`` / ``nn.Conv3d``.

Under CPU autocast (bf16), PyTorch's oneDNN convolution sometimes returns NaN *weight gradients*
when the kernel overhangs a tiny input: 1x1 or 2x2 support dimensions under a 5x5 or 3x3 kernel,
which the squeezing learners (HSNet, ASNet) reach on small images (measured with torch 2.14 on
x86: 9 of 10 random trials NaN for a 5x5 kernel, stride 4, on 2x2 inputs; the outputs and input
gradients were finite). Those convolutions are tiny, so while autograd records, on a CPU, under
autocast, they run in float32 instead; everything else (and every GPU) is untouched.
Parameters and state-dict keys are those of the torch classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _OverhangSafe:
    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type == "cpu"
            and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")
            and any(size < k for size, k in zip(x.shape[2:], self.kernel_size))
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class Conv2d(_OverhangSafe, nn.Conv2d):
    """``nn.Conv2d``; in float32 under CPU autocast when the kernel overhangs the input."""


class Conv3d(_OverhangSafe, nn.Conv3d):
    """``nn.Conv3d``; in float32 under CPU autocast when the kernel overhangs the input."""
