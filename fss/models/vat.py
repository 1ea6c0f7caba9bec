"""VAT: Volumetric Aggregation Transformer (Hong et al., "Cost Aggregation with 4D Convolutional Swin
Transformer for Few-Shot Segmentation", ECCV 2022).

Pipeline, for N query/support pairs (shapes for ResNet-50 and the default ``feature_size`` s = 16):

1. Features: the last block of conv2_x plus every block of conv3_x..conv5_x, bilinearly resized to
   fixed sides 8s, 4s, 2s, s (128, 64, 32, 16) whatever the image size. The original VAT resizes the
   support features *before* feature masking; the HM code masks at the backbone resolution and
   resizes afterwards (``resize_before_masking``, chosen per strategy by default).
2. Cosine correlations of conv3_x..conv5_x, stacked per stage: [N, 3, s, s, s, s],
   [N, 6, 2s, 2s, 2s, 2s], [N, 4, 4s, 4s, 4s, 4s].
3. 4D convolutional embedding (:class:`Encoder4d`, separable 4D convolutions with max pooling)
   down to 128-channel volumes (s/2)^4, (s, s, s/2, s/2), (2s, 2s, s/2, s/2).
4. 4D Swin transformers (window 4, shifted every other block) from the deepest volume up, each
   coarser volume upsampled over its query dimensions and added to the next.
5. Affinity-aware decoder: the volume averaged over its support dimensions, then three 2D Swin
   stages at 2s, 4s, 8s; a stage concatenates the projected query feature of conv4_x / conv3_x /
   conv2_x when the benchmark's ``feature_affinity`` flag says so. Logits [N, 2, 8s, 8s].

On any backbone the deepest four levels play the parts of conv2_x..conv5_x (:meth:`VAT.feature_side`).

Module names follow the reference (learner prefix ``hpn_learner.ours.``) so that its checkpoints
load with :meth:`~fss.models.base.FewShotSegmenter.load_reference_state_dict`. See ``docs/vat.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fss.backbones import FeatureBackbone
from fss.masking import SupportMasking
from fss.models.base import FewShotSegmenter
from fss.models.conv import Conv2d
from fss.models.correlation import multilayer_correlation, resize_query_dims
from fss.models.swin4d import ImageSwin, VolumeSwin, set_gradient_checkpointing

Benchmark = Literal["pascal", "coco", "fss1000", "fss"]

#: which decoder stages (2s, 4s, 8s; fed by conv4_x, conv3_x, conv2_x) see the query feature
FEATURE_AFFINITY: dict[str, tuple[bool, bool, bool]] = {
    "pascal": (False, True, True),
    "coco": (False, False, True),
    "fss1000": (True, True, True),
    "fss": (True, True, True),  # the reference's name for FSS-1000
}
#: channels of the volumes inside each encoder (the first entry is the number of correlations)
ENCODER_CHANNELS = ((64, 128), (64, 128), (32, 64, 128))
#: 4D strides (ha, wa, hb, wb) of each encoder's convolutions: stage 4, stage 3, stage 2
ENCODER_STRIDES = (
    ((2, 2, 1, 1), (1, 1, 2, 2)),
    ((2, 2, 2, 2), (1, 1, 2, 2)),
    ((2, 2, 2, 2), (1, 1, 2, 2), (1, 1, 2, 2)),
)
ENCODER_GROUPS = ((4, 8), (4, 8), (2, 4, 8))
#: blocks of the 4D Swin transformer of stage 4, 3, 2
TRANSFORMER_DEPTHS = (4, 2, 2)
EMBED_DIM = 128
#: output channels of the query-feature projections (conv4_x, conv3_x, conv2_x)
AFFINITY_CHANNELS = (64, 32, 16)
#: channels into the decoder stages without affinity, and after their 1x1 convolutions
DECODER_CHANNELS = (128, 96, 48)


def _over_query(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a 2D op over the query dimensions of [B, C, ha, wa, hb, wb] at every support position."""
    bsz, ch, ha, wa, hb, wb = x.shape
    y = fn(x.permute(0, 4, 5, 1, 2, 3).reshape(bsz * hb * wb, ch, ha, wa))
    return y.view(bsz, hb, wb, *y.shape[1:]).permute(0, 3, 4, 5, 1, 2)


def _over_support(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a 2D op over the support dimensions of [B, C, ha, wa, hb, wb] at every query position."""
    bsz, ch, ha, wa, hb, wb = x.shape
    y = fn(x.permute(0, 2, 3, 1, 4, 5).reshape(bsz * ha * wa, ch, hb, wb))
    return y.view(bsz, ha, wa, *y.shape[1:]).permute(0, 3, 1, 2, 4, 5)


class SeparableConv4d(nn.Module):
    """VAT's 4D convolution: a 2D convolution over the query dimensions plus one over the support
    dimensions, each applied after max-pooling the *other* pair of dimensions by its stride.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size, stride, padding: 4-tuples over (ha, wa, hb, wb).

    Shapes: [B, C_in, ha, wa, hb, wb] -> [B, C_out, ceil(ha/s_a), ceil(wa/s_a), ceil(hb/s_b), ceil(wb/s_b)]
    for kernel 3 / padding 1 (pooling uses ``ceil_mode``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int, int] = (3, 3, 3, 3),
        stride: tuple[int, int, int, int] = (1, 1, 1, 1),
        padding: tuple[int, int, int, int] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        self.query_conv = Conv2d(in_channels, out_channels, kernel_size[:2], stride[:2], padding[:2])
        self.supp_conv = Conv2d(in_channels, out_channels, kernel_size[2:], stride[2:], padding[2:])
        self.query_stride, self.support_stride = tuple(stride[:2]), tuple(stride[2:])

    def forward(self, x: Tensor) -> Tensor:
        query_branch = x
        if max(self.support_stride) > 1:
            query_branch = _over_support(
                lambda t: F.max_pool2d(t, self.support_stride, self.support_stride, ceil_mode=True), x
            )
        query_branch = _over_query(self.query_conv, query_branch)
        support_branch = x
        if max(self.query_stride) > 1:
            support_branch = _over_query(
                lambda t: F.max_pool2d(t, self.query_stride, self.query_stride, ceil_mode=True), x
            )
        support_branch = _over_support(self.supp_conv, support_branch)
        return query_branch + support_branch


class Encoder4d(nn.Module):
    """[SeparableConv4d (kernel 3) -> GroupNorm -> ReLU] per stride, the 4D "patch embedding".

    Args:
        channels: input channels followed by the output channels of each convolution.
        strides: one 4-tuple per convolution.
        groups: GroupNorm groups per convolution.
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        strides: tuple[tuple[int, int, int, int], ...],
        groups: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.conv4d = nn.ModuleList(
            nn.Sequential(SeparableConv4d(cin, cout, stride=stride), nn.GroupNorm(group, cout), nn.ReLU())
            for cin, cout, stride, group in zip(channels[:-1], channels[1:], strides, groups, strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, ha, wa, hb, wb] -> [B, C_out, ha', wa', hb', wb']."""
        for conv in self.conv4d:
            x = conv(x)
        return x


class CostAggregator(nn.Module):
    """4D embedding + 4D Swin aggregation + affinity-aware 2D Swin decoder.

    Args:
        inch: number of correlations of stage 4, 3, 2 (ResNet-50: 3, 6, 4).
        query_channels: channels of the query features of conv4_x, conv3_x, conv2_x that the
            decoder may concatenate (ResNet-50: 1024, 512, 256).
        feature_affinity: per decoder stage, whether it concatenates the projected query feature.
        feature_size: side s of the resized conv5_x features (the reference's 16).
    """

    def __init__(
        self,
        inch: tuple[int, int, int],
        query_channels: tuple[int, int, int],
        feature_affinity: tuple[bool, bool, bool],
        feature_size: int = 16,
    ) -> None:
        super().__init__()
        s = feature_size
        self.feature_affinity = tuple(bool(f) for f in feature_affinity)
        self.encoders = nn.ModuleList(
            Encoder4d((n, *chs), strides, groups)
            for n, chs, strides, groups in zip(
                inch, ENCODER_CHANNELS, ENCODER_STRIDES, ENCODER_GROUPS, strict=True
            )
        )
        volumes = ((s // 2,) * 4, (s, s, s // 2, s // 2), (2 * s, 2 * s, s // 2, s // 2))
        self.transformer = nn.ModuleList(
            VolumeSwin(EMBED_DIM, res, depth, num_heads=4, window=4)
            for res, depth in zip(volumes, TRANSFORMER_DEPTHS, strict=True)
        )
        dims = [
            c + a if f else c for c, a, f in zip(DECODER_CHANNELS, AFFINITY_CHANNELS, self.feature_affinity)
        ]
        sides = (2 * s, 4 * s, 8 * s)
        self.swin_decoder = nn.ModuleList(
            [
                nn.Sequential(
                    ImageSwin(dims[0], (sides[0],) * 2), nn.Conv2d(dims[0], DECODER_CHANNELS[1], 1)
                ),
                nn.Sequential(
                    ImageSwin(dims[1], (sides[1],) * 2), nn.Conv2d(dims[1], DECODER_CHANNELS[2], 1)
                ),
                nn.Sequential(ImageSwin(dims[2], (sides[2],) * 2)),
            ]
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(dims[2], 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, 2, 3, padding=1)
        )
        self.dropout2d = nn.Dropout2d(p=0.5)
        self.proj_query_feat = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU())
            for cin, cout in zip(query_channels, AFFINITY_CHANNELS)
        )
        for proj, used in zip(self.proj_query_feat, self.feature_affinity):
            proj.requires_grad_(used)  # unused ones exist for checkpoint compatibility only

    def forward(self, corrs: list[Tensor], query_feats: list[Tensor]) -> Tensor:
        """Aggregate and decode.

        Args:
            corrs: correlations of stage 4, 3, 2: [N, n_l, s_l, s_l, s_l, s_l] with s_l = s, 2s, 4s.
            query_feats: query features of conv4_x, conv3_x, conv2_x: [N, C_l, 2s, 2s],
                [N, C_l, 4s, 4s], [N, C_l, 8s, 8s].

        Returns:
            logits [N, 2, 8s, 8s].
        """
        affinity: list[Tensor | None] = []
        for i, (proj, feat, used) in enumerate(zip(self.proj_query_feat, query_feats, self.feature_affinity)):
            feat = proj(feat) if used else None
            if feat is not None and i < 2:  # the reference drops channels of the conv4_x/conv3_x features
                feat = self.dropout2d(feat)
            affinity.append(feat)

        corr4, corr3, corr2 = (encoder(corr) for encoder, corr in zip(self.encoders, corrs))
        corr4 = corr4 + self.transformer[0](corr4)
        corr3 = corr3 + resize_query_dims(corr4, corr3.shape[2:4])
        corr3 = corr3 + self.transformer[1](corr3)
        corr2 = corr2 + resize_query_dims(corr3, corr2.shape[2:4])
        corr2 = corr2 + self.transformer[2](corr2)

        x = corr2.mean(dim=(-2, -1))  # [N, 128, 2s, 2s]
        for i, (stage, feat) in enumerate(zip(self.swin_decoder, affinity)):
            if i:
                x = F.interpolate(x, (x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear", align_corners=True)
            x = stage(x if feat is None else torch.cat((x, feat), dim=1))
        return self.decoder(x)


class VATLearner(nn.Module):
    """The trainable part of VAT. ``ours`` is the reference's attribute name, kept for its checkpoints."""

    def __init__(
        self,
        inch: tuple[int, int, int],
        query_channels: tuple[int, int, int],
        feature_affinity: tuple[bool, bool, bool],
        feature_size: int = 16,
    ) -> None:
        super().__init__()
        self.ours = CostAggregator(inch, query_channels, feature_affinity, feature_size)

    def forward(self, corrs: list[Tensor], query_feats: list[Tensor]) -> Tensor:
        """See :meth:`CostAggregator.forward`."""
        return self.ours(corrs, query_feats)


class VAT(FewShotSegmenter):
    """VAT with pluggable support masking.

    Args:
        backbone: a ``FeatureBackbone`` or a name (published: ``resnet50``, ``resnet101``); its deepest
            4 levels play conv2_x..conv5_x (the query projections take their channels).
        masking: a strategy or a name of ``fss.masking.MASKINGS`` (``fm``: the original VAT; ``hm``:
            VAT-HM).
        weights: weights of a backbone given by name (``pretrained``, a file, or None).
        benchmark: ``pascal`` | ``coco`` | ``fss1000`` (alias ``fss``): selects the reference's
            ``feature_affinity`` (pascal: conv3_x, conv2_x; coco: conv2_x; fss1000: all three).
        feature_affinity: override the benchmark's flags (decoder stages fed by conv4_x, conv3_x,
            conv2_x query features).
        feature_size: side s of the resized conv5_x features; conv4_x/conv3_x/conv2_x get 2s/4s/8s.
            The reference fixes 16 (whatever the image size). Any multiple of 8 keeps the parameter
            shapes (so checkpoints load); 8 costs ~16x less and is meant for tests and CPU demos.
        resize_before_masking: resize support features before masking them (the original VAT) or
            after (the HM code). ``None``: before for strategies computed from the plain features
            and the mask alone (``fm``, ``none``: ``needs_masked_input`` False), after for the others.
        gradient_checkpointing: recompute the Swin blocks in the backward pass instead of storing
            their activations (training only; saves memory, costs one more forward of the blocks).

    Example:
        >>> model = VAT(backbone="resnet50", masking="hm", weights=None, benchmark="coco")
        >>> logits = model(query_img, support_imgs, support_masks)  # [B, 2, H, W]
    """

    learner_name = "hpn_learner"
    num_levels = 4

    def __init__(
        self,
        backbone: FeatureBackbone | str = "resnet50",
        masking: SupportMasking | str = "hm",
        weights: str | None = "pretrained",
        benchmark: Benchmark = "coco",
        feature_affinity: tuple[bool, bool, bool] | None = None,
        feature_size: int = 16,
        resize_before_masking: bool | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        if benchmark not in FEATURE_AFFINITY:
            raise ValueError(
                f"unknown VAT benchmark {benchmark!r}: choose one of {', '.join(FEATURE_AFFINITY)} "
                "(option model.net.init_args.benchmark)"
            )
        if feature_size < 8 or feature_size % 8:
            raise ValueError(
                f"VAT feature_size must be a positive multiple of 8 (the reference uses 16), got {feature_size}"
            )
        if feature_affinity is None:
            feature_affinity = FEATURE_AFFINITY[benchmark]
        if len(feature_affinity) != 3:
            raise ValueError(
                f"feature_affinity needs 3 flags (conv4_x, conv3_x, conv2_x), got {feature_affinity}"
            )
        self.benchmark = benchmark
        self.feature_size = feature_size
        self.resize_before_masking = (
            not self.masking.needs_masked_input
            if resize_before_masking is None
            else bool(resize_before_masking)
        )
        layers = self.backbone.feat_layers
        first, *deeper = self.levels  # the conv2_x part: its last map only
        last_of_first = max(i for i, level in enumerate(layers) if level == first)
        self._keep = [i for i, level in enumerate(layers) if level != first or i == last_of_first]
        self._layers = [layers[i] for i in self._keep]
        channels = [self.backbone.feat_channels[i] for i in self._keep]
        last_channels = dict(zip(self._layers, channels))  # each level's last map's channels
        self.hpn_learner = VATLearner(
            inch=tuple(self._layers.count(level) for level in reversed(deeper)),
            query_channels=tuple(last_channels[level] for level in reversed(self.levels[:-1])),
            feature_affinity=tuple(feature_affinity),
            feature_size=feature_size,
        )
        self.gradient_checkpointing = gradient_checkpointing

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the Swin blocks are recomputed in the backward pass (settable)."""
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self._gradient_checkpointing = bool(enabled)
        set_gradient_checkpointing(self.hpn_learner, self._gradient_checkpointing)

    def feature_side(self, level: int) -> int:
        """Side of the resized features of backbone level ``level``: 8s, 4s, 2s, s from the shallowest
        of the model's four levels to the deepest (a ResNet's stages 1..4)."""
        return self.feature_size * 2 ** (len(self.levels) - 1 - self.levels.index(level))

    def _select(self, feats: list[Tensor]) -> list[Tensor]:
        """Backbone features (every map of the four levels) -> the maps VAT uses."""
        return [feats[i] for i in self._keep]

    def _resize(self, feats: list[Tensor]) -> list[Tensor]:
        """Bilinearly (``align_corners=True``) resize each level [N, C, h, w] to its fixed side."""
        out = []
        for feat, lid in zip(feats, self._layers, strict=True):
            size = (self.feature_side(lid),) * 2
            out.append(
                feat
                if feat.shape[-2:] == size
                else F.interpolate(feat, size, mode="bilinear", align_corners=True)
            )
        return out

    def prepare_support_feats(self, feats: list[Tensor]) -> list[Tensor]:
        """Keep VAT's levels; with ``resize_before_masking`` also resize them (original VAT order)."""
        feats = self._select(feats)
        return self._resize(feats) if self.resize_before_masking else feats

    def predict_logits(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_mask: Tensor
    ) -> Tensor:
        """Features of N query/support pairs -> logits [N, 2, 8s, 8s] (128 x 128 by default).

        ``query_feats`` are the backbone's (every map of the four levels); ``support_feats`` come
        from :meth:`prepare_support_feats` and masking. ``support_mask`` is not used again.
        """
        query_feats = self._resize(self._select(query_feats))
        support_feats = self._resize(support_feats)  # no-op when resized before masking
        first = self._layers.count(self.levels[0])  # the conv2_x map is not correlated
        corrs = multilayer_correlation(query_feats[first:], support_feats[first:], self._layers[first:])
        last = dict(zip(self._layers, query_feats))  # the last map of each level
        return self.hpn_learner(corrs, [last[level] for level in reversed(self.levels[:-1])])
