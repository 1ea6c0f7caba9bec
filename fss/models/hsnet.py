"""HSNet: Hypercorrelation Squeeze Networks (Min, Kang & Cho, ICCV 2021).

Multi-layer cosine correlations of the query and (masked) support features are grouped by backbone
level (a ResNet's stages conv3_x..conv5_x) into three 4D "hypercorrelations", *squeezed* by center-pivot 4D convolutions that stride
over the support dimensions, *mixed* from the deepest stage down, averaged over the support
dimensions and *decoded* by 2D convolutions into 2-class logits at 1/4 of the input size.

Module and parameter names follow the reference implementation so that its checkpoints load with
:meth:`~fss.models.base.FewShotSegmenter.load_reference_state_dict` (learner prefix
``hpn_learner.``; the iFSL FS-CS checkpoints' ``learner.`` is read as the same).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fss.backbones import FeatureBackbone
from fss.masking import SupportMasking
from fss.models.base import FewShotSegmenter
from fss.models.conv4d import CenterPivotConv4d
from fss.models.correlation import multilayer_correlation, resize_query_dims

SQUEEZE_CHANNELS = (16, 64, 128)


def _block4d(in_ch: int, out_chs: list[int], kernels: list[int], strides: list[int], groups: int = 4):
    """[Conv4d -> GroupNorm -> ReLU] x len(out_chs); strides act on the support dimensions."""
    layers: list[nn.Module] = []
    for i, (out_ch, k, s) in enumerate(zip(out_chs, kernels, strides)):
        layers += [
            CenterPivotConv4d(out_chs[i - 1] if i else in_ch, out_ch, (k,) * 4, (1, 1, s, s), (k // 2,) * 4),
            nn.GroupNorm(groups, out_ch),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class HPNLearner(nn.Module):
    """The squeeze / mix / decode learner.

    Args:
        inch: number of correlated maps of the deepest, middle and shallowest level (ResNet-50: 3, 6, 4).
    """

    def __init__(self, inch: list[int]) -> None:
        super().__init__()
        c1, c2, c3 = SQUEEZE_CHANNELS
        self.encoder_layer4 = _block4d(inch[0], [c1, c2, c3], [3, 3, 3], [2, 2, 2])
        self.encoder_layer3 = _block4d(inch[1], [c1, c2, c3], [5, 3, 3], [4, 2, 2])
        self.encoder_layer2 = _block4d(inch[2], [c1, c2, c3], [5, 5, 3], [4, 4, 2])
        self.encoder_layer4to3 = _block4d(c3, [c3, c3, c3], [3, 3, 3], [1, 1, 1])
        self.encoder_layer3to2 = _block4d(c3, [c3, c3, c3], [3, 3, 3], [1, 1, 1])
        self.decoder1 = nn.Sequential(
            nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c2, 3, padding=1), nn.ReLU()
        )
        self.decoder2 = nn.Sequential(
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, 2, 3, padding=1)
        )

    def forward(self, hypercorr: list[Tensor]) -> Tensor:
        """Hypercorrelations [N, n_l, ha_l, wa_l, hb_l, wb_l], deepest level first -> logits [N, 2, h, w]."""
        sqz4 = self.encoder_layer4(hypercorr[0])
        sqz3 = self.encoder_layer3(hypercorr[1])
        sqz2 = self.encoder_layer2(hypercorr[2])

        mix43 = self.encoder_layer4to3(resize_query_dims(sqz4, sqz3.shape[-4:-2]) + sqz3)
        mix432 = self.encoder_layer3to2(resize_query_dims(mix43, sqz2.shape[-4:-2]) + sqz2)

        encoded = mix432.flatten(-2).mean(dim=-1)  # average over the support dimensions
        decoded = self.decoder1(encoded)
        size = (decoded.shape[-1] * 2,) * 2
        decoded = F.interpolate(decoded, size, mode="bilinear", align_corners=True)
        return self.decoder2(decoded)


class HSNet(FewShotSegmenter):
    """HSNet with pluggable support masking, on the deepest 3 levels of any backbone.

    Args:
        backbone: a ``FeatureBackbone`` or a name (published: ``resnet50``, ``resnet101``; small runs:
            ``resnet18``); see :class:`~fss.models.base.FewShotSegmenter`.
        masking: a strategy or a name of ``fss.masking.MASKINGS`` (``fm``: the original HSNet; ``hm``:
            HSNet-HM).
        weights: weights of a backbone given by name (``pretrained``, a file, or None).

    Example:
        >>> model = HSNet(backbone="resnet18", masking="hm", weights=None)
        >>> logits = model(query_img, support_imgs, support_masks)  # [B, 2, H, W]
    """

    learner_name = "hpn_learner"
    #: the iFSL FS-CS HSNet (github.com/dahyun-kang/ifsl, fs-cs) names the same learner ``learner``
    learner_aliases = ("learner",)
    num_levels = 3

    def __init__(
        self,
        backbone: FeatureBackbone | str = "resnet50",
        masking: SupportMasking | str = "hm",
        weights: str | None = "pretrained",
    ) -> None:
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        layers = self.backbone.feat_layers
        self.hpn_learner = HPNLearner([layers.count(level) for level in reversed(self.levels)])

    def predict_logits(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_mask: Tensor
    ) -> Tensor:
        """Features of N query/support pairs -> logits [N, 2, 2 h, 2 w] (h, w: the shallowest level's)."""
        corr = multilayer_correlation(query_feats, support_feats, self.backbone.feat_layers, query_major=True)
        return self.hpn_learner(corr)
