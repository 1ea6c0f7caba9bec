"""ASNet: Attentive Squeeze Network (Kang & Cho, CVPR 2022, few-shot segmentation variant).

Multi-layer cosine correlations of the query and support features are grouped by backbone level (a
ResNet's stages conv3_x..conv5_x) into three hypercorrelations [N, n_l, ha, wa, hb, wb]. Stacks of
attentive squeeze layers (``fss.models.aslayer``) shrink their support dimensions with attention
whose keys are limited to the support mask; the levels are mixed from the deepest down, and a 2D
decoder turns the result into 2-class logits at twice the resolution of the shallowest level.

Module and parameter names follow the reference implementation so that its checkpoints load with
:meth:`~fss.models.base.FewShotSegmenter.load_reference_state_dict` (learner prefix ``learner.``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fss.backbones import FeatureBackbone
from fss.masking import SupportMasking
from fss.models.aslayer import AttentiveSqueezeLayer
from fss.models.base import FewShotSegmenter
from fss.models.correlation import multilayer_correlation, resize_query_dims

#: support features at least this wide are average-pooled (3x3, stride 2) before correlation
POOL_THR = 50
#: support size (hb, wb) that the mixing blocks of the learner expect
MIX_SUPPORT_SIZE = (2, 2)


def pool_large_feats(feats: list[Tensor], pool_thr: int = POOL_THR) -> list[Tensor]:
    """The reference's support pooling: maps [N, C, h, w] with ``w >= pool_thr`` are average-pooled.

    The pooling (3x3, stride 2, padding 1, padding counted in the average) halves h and w
    (rounding up); narrower maps are returned unchanged. At a 400 px support image this pools the
    conv3_x features (50 x 50 -> 25 x 25) only.
    """
    return [
        F.avg_pool2d(f, kernel_size=3, stride=2, padding=1) if f.shape[-1] >= pool_thr else f for f in feats
    ]


def fit_support_dims(x: Tensor, size: tuple[int, int] = MIX_SUPPORT_SIZE) -> Tensor:
    """Adaptive-average-pool the support dims of [N, C, ha, wa, hb, wb] to ``size``.

    The identity (the tensor itself) when they already have that size, which is always the case
    for support images of the reference's sizes (about 393 to 512 px); elsewhere it lets the
    learner run instead of failing (see :class:`ASNet`).
    """
    bsz, ch, ha, wa, hb, wb = x.shape
    if (hb, wb) == tuple(size):
        return x
    x = F.adaptive_avg_pool2d(x.reshape(bsz, ch * ha * wa, hb, wb), size)
    return x.view(bsz, ch, ha, wa, *size)


class SqueezeBlock(nn.ModuleList):
    """A sequence of attentive squeeze layers that all see the support mask.

    Args:
        in_channels: channels of the input correlation.
        out_channels, kernel_sizes, strides: one entry per layer; padding is ``k // 2`` for
            kernels above 2, else 0 (the reference's rule).
        pool_kv: keys and values use the strided convolution too.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: list[int],
        kernel_sizes: list[int],
        strides: list[int],
        pool_kv: bool = False,
    ) -> None:
        layers = []
        for i, (out_ch, k, s) in enumerate(zip(out_channels, kernel_sizes, strides, strict=True)):
            in_ch = out_channels[i - 1] if i else in_channels
            layers.append(AttentiveSqueezeLayer(in_ch, out_ch, k, s, k // 2 if k > 2 else 0, pool_kv=pool_kv))
        super().__init__(layers)

    def forward(self, x: Tensor, support_mask: Tensor) -> Tensor:
        """[N, C_in, ha, wa, hb, wb], mask [N, H, W] -> [N, C_out, ha, wa, hb', wb']."""
        for layer in self:
            x = layer(x, support_mask)
        return x


class AttentionLearner(nn.Module):
    """Squeeze each level's hypercorrelation, mix them from the deepest down, decode to logits.

    Args:
        inch: number of correlated maps of the deepest, middle and shallowest level (ResNet-50: 3, 6, 4).
    """

    def __init__(self, inch: list[int]) -> None:
        super().__init__()
        self.encoder_layer4 = SqueezeBlock(inch[0], [32, 128], [5, 3], [4, 2])
        self.encoder_layer3 = SqueezeBlock(inch[1], [32, 128], [5, 5], [4, 4], pool_kv=True)
        self.encoder_layer2 = SqueezeBlock(inch[2], [32, 128], [5, 5], [4, 4], pool_kv=True)
        self.encoder_layer4to3 = SqueezeBlock(128, [128, 128], [1, 2], [1, 1])
        self.encoder_layer3to2 = SqueezeBlock(128, [128, 128], [1, 2], [1, 1])
        self.decoder1 = nn.Sequential(
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 64, 3, padding=1), nn.ReLU()
        )
        self.decoder2 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 2, 3, padding=1)
        )

    def forward(self, hypercorr: list[Tensor], support_mask: Tensor) -> Tensor:
        """Hypercorrelations [N, n_l, ha_l, wa_l, hb_l, wb_l], deepest level first, mask [N, H, W].

        Returns:
            logits [N, 2, 2 * ha_2, 2 * wa_2].
        """
        sqz4 = self.encoder_layer4(hypercorr[0], support_mask).mean(dim=(-2, -1), keepdim=True)
        sqz3 = fit_support_dims(self.encoder_layer3(hypercorr[1], support_mask))
        sqz2 = fit_support_dims(self.encoder_layer2(hypercorr[2], support_mask))

        mix43 = resize_query_dims(sqz4, sqz3.shape[2:4]) + sqz3  # support dims broadcast 1x1 -> 2x2
        mix43 = self.encoder_layer4to3(mix43, support_mask)  # support dims 2x2 -> 1x1
        mix432 = resize_query_dims(mix43, sqz2.shape[2:4]) + sqz2
        mix432 = self.encoder_layer3to2(mix432, support_mask)  # [N, 128, ha, wa, 1, 1]

        decoded = self.decoder1(mix432[..., 0, 0])
        size = (2 * decoded.shape[-2], 2 * decoded.shape[-1])
        decoded = F.interpolate(decoded, size, mode="bilinear", align_corners=True)
        return self.decoder2(decoded)


class ASNet(FewShotSegmenter):
    """ASNet with pluggable support masking.

    Support features are prepared as in the reference: maps at least ``pool_thr`` (50) wide are
    average-pooled (3x3, stride 2) before masking and correlation, and the support mask is used
    again inside every attentive squeeze layer (attention keys outside it get a -1e9 logit),
    whatever the masking strategy.

    Masking: the reference ASNet never multiplies its support features by the mask (its mask
    acts in the attention only): that is ``masking="none"``, the HM paper's ASNet "FM" baseline.
    Every other strategy (``fm`` multiplies, as in every model; ``im``, ``hm``: ASNet-HM as the HM
    reference, ``hm_add``, ``hm_reverse``) is applied to the pooled support features, with the
    attention masking kept.

    Support size: the reference learner only runs for support images of 393 to 512 px (it is
    trained at 400 and 473), where the squeezed stage-3 and stage-2 support dims are exactly
    2 x 2; elsewhere it fails in a convolution or a broadcast. Here they are adaptive-average-
    pooled to 2 x 2 (:func:`fit_support_dims`), so the model also runs on small images; at the
    reference's sizes nothing changes. The query size is free. The decoder upsamples to
    (2 h, 2 w) where the reference writes (2 w, 2 w): the same for the square inputs it uses.

    Args:
        backbone: a ``FeatureBackbone`` or a name (published: ``resnet50``, ``resnet101``); its deepest
            3 levels are correlated.
        masking: a strategy or a name of ``fss.masking.MASKINGS`` (``none``: the original ASNet;
            ``hm``: ASNet-HM).
        weights: weights of a backbone given by name (``pretrained``, a file, or None).
        pool_thr: support feature maps at least this wide are pooled (the reference's 50).

    Example:
        >>> model = ASNet(backbone="resnet18", masking="hm", weights=None)
        >>> logits = model(query_img, support_imgs, support_masks)  # [B, 2, H, W]
    """

    learner_name = "learner"
    num_levels = 3

    def __init__(
        self,
        backbone: FeatureBackbone | str = "resnet50",
        masking: SupportMasking | str = "hm",
        weights: str | None = "pretrained",
        pool_thr: int = POOL_THR,
    ) -> None:
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        self.pool_thr = pool_thr
        layers = self.backbone.feat_layers
        self.learner = AttentionLearner([layers.count(level) for level in reversed(self.levels)])

    def prepare_support_feats(self, feats: list[Tensor]) -> list[Tensor]:
        """Average-pool support features [N, C, h, w] with ``w >= pool_thr`` (before masking)."""
        return pool_large_feats(feats, self.pool_thr)

    def predict_logits(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_mask: Tensor
    ) -> Tensor:
        """Features of N query/support pairs, masks [N, H, W] -> logits [N, 2, 2 * ha_2, 2 * wa_2]."""
        corr = multilayer_correlation(query_feats, support_feats, self.backbone.feat_layers)
        return self.learner(corr, support_mask)
