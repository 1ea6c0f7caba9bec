"""Frozen torchvision ResNets that return every residual block's output before its last ReLU.

HSNet, ASNet and VAT correlate the *pre-activation* output of each residual block (bottleneck for
ResNet-50/101, basic block for ResNet-18/34). :class:`ResNet` keeps torchvision's module names
(``conv1``, ``bn1``, ``layer1`` .. ``layer4``) so that reference checkpoints load key for key.
Its levels are the stages 1..4 (conv2_x..conv5_x, strides 4, 8, 16, 32), one map per block.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from fss.backbones.base import BackboneWeightsError, FeatureBackbone, FeatureInfo
from fss.speed import CHANNELS_LAST_MIN_PIXELS, cpu_channels_last

#: blocks per stage (layer1..layer4) of each supported architecture
BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}


def _torchvision_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a torchvision ``state_dict`` from ``path``; floating tensors are cast to float32."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(
            f"backbone weights file not found: {path}. Pass an existing torchvision state_dict "
            "(.pth) with --model.backbone.weights PATH, 'imagenet' for torchvision's weights, or null "
            "for random."
        )
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


class ResNet(FeatureBackbone):
    """A frozen torchvision ResNet returning the pre-ReLU output of every residual block.

    Levels: the stages 1..4 (conv2_x..conv5_x), one map per block; a model selects the deepest ones
    it correlates (HSNet/ASNet: 2..4 = conv3_x..conv5_x; VAT: 1..4). BatchNorm is folded into the
    convolutions (``_conv_bn``); on CPU, large inputs run in channels_last (``fss.speed``).

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        weights: ``imagenet`` (torchvision's ImageNet-1k V1 weights, as the reference code used), a
            path to a torchvision ``state_dict`` file (e.g. written by ``fss pretrain``), or null for
            random weights.
    """

    #: CPU inputs with at least this many pixels run in channels_last (``fss.speed.cpu_channels_last``)
    channels_last_min_pixels: int | None = CHANNELS_LAST_MIN_PIXELS

    def __init__(self, name: str = "resnet50", weights: str | None = "imagenet") -> None:
        super().__init__()
        if name not in BLOCKS:
            raise ValueError(f"unknown ResNet {name!r}: choose one of {', '.join(BLOCKS)}")
        self.name = name
        net = getattr(torchvision.models, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if name in ("resnet50", "resnet101") else 1
        self._describe(
            [
                FeatureInfo(
                    channels=width * expansion,
                    stride=2 ** (stage + 1),
                    level=stage,
                    module=f"layer{stage}.{i}",
                )
                for stage, width in zip((1, 2, 3, 4), (64, 128, 256, 512))
                for i in range(BLOCKS[name][stage - 1])
            ]
        )
        #: BatchNorm-folded convolution weights, see ``_conv_bn``
        self._folded: dict[str, tuple[tuple, Tensor, Tensor]] = {}
        self.load_weights(weights)
        self._freeze()

    def load_weights(self, weights: str | None) -> None:
        """Load ``"imagenet"``, a torchvision state_dict file, or keep random init (``None``)."""
        if weights is None or weights == "none":
            return
        if weights == "imagenet":
            enum = torchvision.models.get_model_weights(self.name).IMAGENET1K_V1
            try:
                sd = enum.get_state_dict(progress=False, check_hash=False)
            except Exception as err:  # no network, proxy, corrupt cache ...
                raise BackboneWeightsError(
                    f"could not obtain torchvision's ImageNet weights for {self.name} ({err}). "
                    f"Download {enum.url} on a machine with internet and pass the file with "
                    f"--model.backbone.weights /path/to/{Path(enum.url).name} (or put it in torch's hub "
                    f"cache {torch.hub.get_dir()}/checkpoints/), or use --model.backbone.weights null for "
                    "random weights."
                ) from err
        else:
            sd = _torchvision_state_dict(weights)
        self.load_torchvision_state_dict(sd)

    def load_torchvision_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load a torchvision ResNet ``state_dict`` (the ``fc.*`` classifier keys are ignored)."""
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise BackboneWeightsError(
                f"the weights do not fit a torchvision {self.name}: missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}"
            )

    def _conv_bn(self, key: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
        """``bn(conv(x))`` as one convolution with the BatchNorm folded into its weights.

        The backbone is frozen and in eval mode, so BatchNorm is a fixed per-channel affine map;
        folding it (``torch.nn.utils.fusion.fuse_conv_bn_weights``) saves a pass over every
        activation (about 8% of the backbone's time on CPU) and changes values only by rounding
        (about 1e-6 relative). The folded weights are cached per convolution and rebuilt whenever
        a source tensor changes (``load_state_dict`` and in-place edits bump ``_version``;
        ``.to()`` gives new storage), so they never go stale.
        """
        sources = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        stamp = tuple((t._version, t.data_ptr(), t.dtype) for t in sources)
        cached = self._folded.get(key)
        if cached is None or cached[0] != stamp:
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
            cached = self._folded[key] = (stamp, weight.detach(), bias.detach())
        return F.conv2d(x, cached[1], cached[2], conv.stride, conv.padding, conv.dilation, conv.groups)

    def _block_pre_relu(self, key: str, block: nn.Module, x: Tensor) -> Tensor:
        """A torchvision BasicBlock/Bottleneck forward without its final ReLU (BatchNorm folded)."""
        out = torch.relu_(self._conv_bn(f"{key}.conv1", block.conv1, block.bn1, x))
        out = self._conv_bn(f"{key}.conv2", block.conv2, block.bn2, out)
        if hasattr(block, "conv3"):
            out = self._conv_bn(f"{key}.conv3", block.conv3, block.bn3, torch.relu_(out))
        if block.downsample is not None:
            conv, bn = block.downsample
            x = self._conv_bn(f"{key}.downsample", conv, bn, x)
        return out.add_(x)

    def forward(self, img: Tensor) -> list[Tensor]:
        """Images [N, 3, H, W] (ImageNet-normalised) -> the pre-ReLU output [N, C_i, h_i, w_i] of every
        block of the selected stages.

        On CPU, from ``channels_last_min_pixels`` on, the images and every feature are in
        ``torch.channels_last`` memory format (``fss.speed.cpu_channels_last``).
        """
        img = cpu_channels_last(img, self.channels_last_min_pixels)
        first = self.levels[0]
        feat = self.maxpool(torch.relu_(self._conv_bn("conv1", self.conv1, self.bn1, img)))
        feats: list[Tensor] = []
        for stage in range(1, 5):
            for i, block in enumerate(getattr(self, f"layer{stage}")):
                pre = self._block_pre_relu(f"layer{stage}.{i}", block, feat)
                if stage >= first:
                    feats.append(pre)
                    feat = torch.relu(pre)  # out of place: ``pre`` is returned
                else:
                    feat = pre.relu_()
        return feats
