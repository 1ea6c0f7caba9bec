"""VGG-16 with BatchNorm split into PSPNet's five stages, the other backbone of the prototype family
(PFENet, BAM: ``vgg: True`` in their configs).

The layers are torchvision's ``vgg16_bn().features`` (13 blocks of 3x3 convolution with bias,
BatchNorm and ReLU, 2x2 max-pools between the five groups) with two differences the references make:

* the max-pools round **up** (``ceil_mode=True``): a 473 px crop gives 237, 119, 60 and 30 px maps,
  not torchvision's 236, 118, 59, 29;
* the fifth max-pool (index 43) is dropped: ``layer4`` keeps ``layer3``'s stride 16.

Stages (index ranges into ``features``, as the references cut them):

========  =========  ===============================  ========  ======
stage     indices    content                          channels  stride
========  =========  ===============================  ========  ======
layer0    0..6       2 x conv 64, max-pool            64        2
layer1    7..13      2 x conv 128, max-pool           128       4
layer2    14..23     3 x conv 256, max-pool           256       8
layer3    24..33     3 x conv 512, max-pool           512       16
layer4    34..42     3 x conv 512                     512       16
========  =========  ===============================  ========  ======

``layer0`` is the stem (:meth:`VGG16BN.stem`); levels 1..4 are ``layer1``..``layer4`` (each stage's
output: after a max-pool for 0..3, after the last ReLU for 4). Parameter names are the references'
(``layer<k>.<index within the stage>``), so BAM/PSPNet checkpoints load as they are; the ImageNet
file (``initmodel/vgg16_bn.pth``, torchvision's ``vgg16_bn`` state_dict: ``features.<index>``,
``classifier.*``) is mapped by the index ranges above (:func:`imagenet_key`).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from fss.backbones.base import (
    FeatureInfo,
    StagedBackbone,
    load_renamed_state_dict,
)

#: the ImageNet file in the PSPNet/PFENet/BAM ``initmodel`` folder
WEIGHT_FILE = "vgg16_bn.pth"
#: output channels of each 3x3 convolution of a stage (at width 64)
STAGE_CONVS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)
#: first index of each stage in ``vgg16_bn.features`` (a convolution block is 3 modules, a max-pool 1)
STAGE_STARTS = (0, 7, 14, 24, 34)
#: nominal stride of each stage's output
STAGE_STRIDES = (2, 4, 8, 16, 16)


def imagenet_key(key: str) -> str:
    """A key of torchvision's ``vgg16_bn`` state_dict (``features.24.weight``) -> ours (``layer3.0.weight``).

    Keys that are not ``features.<index>`` are returned unchanged.
    """
    match = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    if not match:
        return key
    index = int(match.group(1))
    stage = max(s for s, start in enumerate(STAGE_STARTS) if start <= index)
    return f"layer{stage}.{index - STAGE_STARTS[stage]}.{match.group(2)}"


class VGG16BN(StagedBackbone):
    """A frozen VGG-16-BN in PSPNet's five stages (module docstring), one map per stage 1..4.

    Args:
        weights: ``imagenet``: ``initmodel/vgg16_bn.pth`` under the working directory (where the
            references keep torchvision's ImageNet ``vgg16_bn`` weights); a path to such a
            ``state_dict`` (``classifier.*`` keys ignored) or to a checkpoint of this backbone in our
            (the references') names; or null for random weights. There is no download.
        width: channels of the first convolutions (64; every width scales with it, for fast tests).
        trainable: fine-tune it (BAM's base learner in stage 1: parameters get gradients and
            BatchNorm follows ``.train()``); False (every few-shot model): frozen, always in eval mode.

    Example:
        >>> bb = VGG16BN(weights="initmodel/vgg16_bn.pth")
        >>> [tuple(f.shape[1:]) for f in bb(torch.randn(1, 3, 473, 473))]
        [(128, 119, 119), (256, 60, 60), (512, 30, 30), (512, 30, 30)]
    """

    def __init__(self, weights: str | None = "imagenet", width: int = 64, trainable: bool = False) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"VGG16BN width must be positive, got {width}")
        self.name = "vgg16_bn"
        in_channels = 3
        for stage, convs in enumerate(STAGE_CONVS):
            modules: list[nn.Module] = []
            for channels in convs:
                out = channels * width // 64
                modules += [
                    nn.Conv2d(in_channels, out, 3, padding=1),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out
            if stage < 4:
                modules.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            setattr(self, f"layer{stage}", nn.Sequential(*modules))
        self._describe(
            [
                FeatureInfo(
                    channels=STAGE_CONVS[stage][-1] * width // 64,
                    stride=STAGE_STRIDES[stage],
                    level=stage,
                    module=f"layer{stage}",
                )
                for stage in (1, 2, 3, 4)
            ]
        )
        self._finish(weights, trainable)

    @staticmethod
    def reference_key(key: str) -> str:
        """A backbone key of a BAM/PSPNet checkpoint -> ours: the same (``layer<k>.<i>``)."""
        return key

    weights_label = "VGG-16-BN"
    weights_origin = "torchvision's ImageNet vgg16_bn weights as the references keep them ({file} in their initmodel/ folder)"

    @property
    def weight_file(self) -> str:
        """The ImageNet weights file under initmodel/ (the references' name)."""
        return WEIGHT_FILE

    def load_reference_state_dict(self, sd: dict[str, Tensor], source: str = "the state_dict") -> None:
        """Load keys in our names or torchvision's (``module.``, ``features.<i>``; ``classifier.*`` ignored)."""
        load_renamed_state_dict(self, sd, imagenet_key, "classifier.", self.name, source)

    def stem(self, img: Tensor) -> Tensor:
        """Images [N, 3, H, W] -> ``layer0``'s output [N, width, ceil(H/2), ceil(W/2)]."""
        return self.layer0(img)
