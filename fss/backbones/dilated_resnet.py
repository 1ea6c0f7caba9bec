"""The dilated ResNet with the deep stem of PSPNet, the backbone of the prototype family (PFENet, BAM, NTRENet).

Differences from torchvision's ResNet (:class:`~fss.backbones.ResNet`):

* **deep stem**: three 3x3 convolutions (3->64 stride 2, 64->64, 64->128), each with BatchNorm and
  ReLU, then the 3x3 max-pool; ``layer1`` therefore starts from 128 channels (its first block's
  shortcut projects 128->256);
* **output stride 8**: ``layer3`` and ``layer4`` keep the resolution of ``layer2``: their strided
  convolutions (the 3x3 ``conv2`` of the first block and the shortcut projection) have stride 1, and
  every 3x3 ``conv2`` of ``layer3`` / ``layer4`` is dilated by 2 / 4 (padding = dilation);
* **maps**: one per stage, the stage's output *after* its last ReLU (what these models read:
  ``layer2``/``layer3`` for the prototype, ``layer4`` for the prior mask and the base learner).

Parameter names are those of the PSPNet-style ImageNet files the references load
(``resnet50_v2.pth``, ``resnet101_v2.pth``: ``conv1``..``conv3``, ``bn1``..``bn3``, ``layer1``..
``layer4``, torchvision's bottleneck names), so those files load key for key;
:func:`reference_backbone_key` maps the references' ``layer0.<i>`` stem names of their checkpoints.

Levels: 1..4 = ``layer1``..``layer4`` (strides 4, 8, 8, 8). :meth:`DilatedResNet.run_stages` runs
the deeper stages from a given level's map: BAM and PFENet compute the support's ``layer4`` from
its *masked* ``layer3`` map.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from fss.backbones.base import (
    FeatureInfo,
    StagedBackbone,
    load_renamed_state_dict,
)

#: bottleneck blocks per stage of each supported depth
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}
#: the ImageNet file of each depth in the PSPNet/PFENet/BAM ``initmodel`` folder
WEIGHT_FILES = {"resnet50": "resnet50_v2.pth", "resnet101": "resnet101_v2.pth"}
#: (stem module in the references' ``layer0`` Sequential) -> our name
_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}


def reference_backbone_key(key: str) -> str:
    """A key of a PFENet/BAM/NTRENet checkpoint's backbone (``layer0.3.weight``) -> ours (``conv2.weight``)."""
    match = re.fullmatch(r"layer0\.(\d+)\.(.+)", key)
    if match and match.group(1) in _STEM:
        return f"{_STEM[match.group(1)]}.{match.group(2)}"
    return key


class DilatedResNet(StagedBackbone):
    """A frozen deep-stem ResNet-50/101 with output stride 8 (PSPNet's), one post-ReLU map per stage.

    Args:
        name: ``resnet50`` or ``resnet101``.
        weights: ``imagenet``: the PSPNet-style ImageNet file where the references keep it,
            ``initmodel/resnet50_v2.pth`` (``resnet101_v2.pth``) under the working directory; a path
            to such a ``state_dict`` (their ``fc.*`` keys are ignored) or to a checkpoint of this
            backbone; or null for random weights. There is no download: the files are distributed
            by the PSPNet authors with PSPNet/PFENet/BAM.
        width: channels of ``layer1``'s bottleneck (64 in the references; smaller for fast tests:
            every width scales with it, the stem's ``64, 64, 128`` included).
        trainable: fine-tune it (PSPNet, BAM's base learner in stage 1: parameters get gradients and
            BatchNorm follows ``.train()``); False (every few-shot model): frozen, always in eval mode.

    Example:
        >>> bb = DilatedResNet("resnet50", weights="initmodel/resnet50_v2.pth")
        >>> [f.shape[1] for f in bb(torch.randn(1, 3, 473, 473))]  # 60 x 60 maps
        [256, 512, 1024, 2048]
    """

    def __init__(
        self,
        name: str = "resnet50",
        weights: str | None = "imagenet",
        width: int = 64,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if name not in DEPTHS:
            raise ValueError(f"unknown dilated ResNet {name!r}: choose one of {', '.join(DEPTHS)}")
        if width < 1:
            raise ValueError(f"DilatedResNet width must be positive, got {width}")
        self.name = f"dilated_{name}"
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 2 * width
        for stage, (blocks, stride, dilation) in enumerate(
            zip(DEPTHS[name], (1, 2, 1, 1), (1, 1, 2, 4)), start=1
        ):
            layer, in_channels = self._stage(in_channels, width * 2 ** (stage - 1), blocks, stride, dilation)
            setattr(self, f"layer{stage}", layer)
        self._describe(
            [
                FeatureInfo(
                    channels=4 * width * 2 ** (stage - 1),
                    stride=4 if stage == 1 else 8,
                    level=stage,
                    module=f"layer{stage}",
                )
                for stage in (1, 2, 3, 4)
            ]
        )
        self._finish(weights, trainable)

    @staticmethod
    def _stage(
        in_channels: int, planes: int, blocks: int, stride: int, dilation: int
    ) -> tuple[nn.Sequential, int]:
        """``blocks`` bottlenecks; the first projects its shortcut, the 3x3 convolutions are dilated."""
        out = planes * Bottleneck.expansion
        shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
        )
        layers = [Bottleneck(in_channels, planes, stride=stride, downsample=shortcut, dilation=dilation)]
        layers += [Bottleneck(out, planes, dilation=dilation) for _ in range(blocks - 1)]
        return nn.Sequential(*layers), out

    @staticmethod
    def reference_key(key: str) -> str:
        """A backbone key of a BAM/PFENet checkpoint -> ours (:func:`reference_backbone_key`)."""
        return reference_backbone_key(key)

    weights_label = "dilated ResNet"
    weights_origin = "the PSPNet-style ImageNet weights {file} (distributed with PSPNet/PFENet/BAM in their initmodel/ folder)"

    @property
    def weight_file(self) -> str:
        """The ImageNet weights file under initmodel/ (the references' name)."""
        return WEIGHT_FILES[self.name.removeprefix("dilated_")]

    def load_reference_state_dict(self, sd: dict[str, Tensor], source: str = "the state_dict") -> None:
        """Load backbone keys in our names or the references' (``module.``, ``layer0.<i>``; ``fc.*`` ignored)."""
        load_renamed_state_dict(self, sd, reference_backbone_key, "fc.", self.name, source)

    def stem(self, img: Tensor) -> Tensor:
        """Images [N, 3, H, W] -> the stem's output [N, 2*width, H/4, W/4] (the references' ``layer0``)."""
        x = torch.relu(self.bn1(self.conv1(img)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.maxpool(torch.relu(self.bn3(self.conv3(x))))
