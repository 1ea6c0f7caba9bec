"""SG-One-style prototype baseline (Zhang, Wei, Yang & Huang, "SG-One: Similarity Guidance Network for
One-Shot Semantic Segmentation", IEEE Transactions on Cybernetics 2020), the origin of feature masking
(HM's reference [1]).

A small model that fuses its K shots itself (``fuses_shots``), through the shot-fusion hook
:meth:`~fss.models.base.FewShotSegmenter.fuse_shots`:

1. features: the last map of each of the backbone's deepest two levels (a ResNet's conv4_x and
   conv5_x), the deeper one resized bilinearly to the shallower one's size, concatenated: [N, C, h, w];
2. guidance branch: a trainable 1x1 embedding of query and support features; the support's
   *representative vector* is its masked average pooling (MAP) with the support mask resized to h x w;
   the K vectors of an episode are averaged into one prototype;
3. the cosine similarity of every query position with the prototype: a similarity map [B, 1, h, w];
4. segmentation branch: a second 1x1 embedding of the query features, multiplied by the similarity
   map, decoded by two 3x3 convolutions into 2-class logits [B, 2, h, w].

Every masking strategy works: the strategy decides which support features are pooled (FM: features
already multiplied by the mask; IM: features of the masked image; ``none``: the plain features, which
MAP alone restricts to the object). Not a reproduction of the paper's VGG-16 numbers: the structure
(MAP prototype, cosine guidance, multiplicative fusion) on fss's frozen backbones, trained end to end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fss.backbones import FeatureBackbone
from fss.masking import SupportMasking, resize_mask
from fss.models.base import FewShotSegmenter

#: MAP of an empty mask divides by this instead of 0
EPS = 1e-5


def masked_average_pooling(feat: Tensor, mask: Tensor) -> Tensor:
    """Representative vectors [N, C] of features [N, C, h, w] under masks [N, H, W] (resized to h x w).

    ``sum(feat * m) / (sum(m) + EPS)`` with ``m`` the bilinearly resized (``align_corners=True``) mask.
    """
    m = resize_mask(mask, feat.shape[-2:]).to(feat.dtype)
    return (feat * m).sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + EPS)


class SGOneHead(nn.Module):
    """The trainable part: guidance embedding, segmentation embedding, decoder.

    Args:
        in_channels: C of the concatenated features.
        hidden: channels of the embeddings (256).
    """

    def __init__(self, in_channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.guide = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU())
        self.segment = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.Conv2d(hidden, hidden // 2, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden // 2, 2, 3, padding=1)
        )

    def prototypes(self, support_feat: Tensor, support_masks: Tensor) -> Tensor:
        """Support features [B*K, C, h, w] (shot-minor), masks [B, K, H, W] -> one prototype per episode [B, D].

        The mean of the K shots' representative vectors.
        """
        batch, shots = support_masks.shape[:2]
        vectors = masked_average_pooling(self.guide(support_feat), support_masks.flatten(0, 1))
        return vectors.view(batch, shots, -1).mean(dim=1)

    def forward(self, query_feat: Tensor, prototype: Tensor) -> Tensor:
        """Query features [B, C, h, w], prototypes [B, D] -> logits [B, 2, h, w]."""
        similarity = F.cosine_similarity(self.guide(query_feat), prototype[:, :, None, None], dim=1, eps=EPS)
        return self.decoder(self.segment(query_feat) * similarity.unsqueeze(1))


class SGOne(FewShotSegmenter):
    """SG-One-style baseline: masked-average-pooled prototypes and cosine guidance (see the module docstring).

    Args:
        backbone: a ``FeatureBackbone`` or a name; the last map of its deepest two levels is used.
        masking: a strategy or a name of ``fss.masking.MASKINGS``.
        weights: weights of a backbone given by name (``pretrained``, a file, or None).
        hidden: channels of the guidance and segmentation embeddings.

    Example:
        >>> model = SGOne(backbone="resnet18", masking="fm", weights=None)
        >>> logits = model(query_img, support_imgs, support_masks)  # [B, 2, H, W], any K
    """

    learner_name = "learner"
    num_levels = 2
    fuses_shots = True

    def __init__(
        self,
        backbone: FeatureBackbone | str = "resnet50",
        masking: SupportMasking | str = "fm",
        weights: str | None = "pretrained",
        hidden: int = 256,
    ) -> None:
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        info = self.backbone.feature_info
        self._last = [max(i for i, f in enumerate(info) if f.level == level) for level in self.levels]
        self.learner = SGOneHead(sum(info[i].channels for i in self._last), hidden)

    def _features(self, feats: list[Tensor]) -> Tensor:
        """The last map of each level, resized to the shallower one's size and concatenated: [N, C, h, w]."""
        maps = [feats[i] for i in self._last]
        size = maps[0].shape[-2:]
        maps = [
            m if m.shape[-2:] == size else F.interpolate(m, size, mode="bilinear", align_corners=True)
            for m in maps
        ]
        return torch.cat(maps, dim=1)

    def fuse_shots(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_masks: Tensor
    ) -> Tensor:
        """One prototype per episode (the mean over its K shots) -> logits [B, 1, 2, h, w]."""
        prototype = self.learner.prototypes(self._features(support_feats), support_masks)
        return self.learner(self._features(query_feats), prototype).unsqueeze(1)
