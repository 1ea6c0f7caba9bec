"""BAM (Lang, Cheng, Tu & Han, "Learning What Not to Segment: A New Perspective on Few-Shot
Segmentation", CVPR 2022): a PFENet-style meta learner, a frozen PSPNet base learner, and an ensemble
that suppresses the base classes the base learner sees, weighted by a Gram-matrix estimate of how
different the query and support scenes are.

Same parameter shapes and forward computation as the public code (chunbolang/BAM, ``model/BAM.py``);
a test compares logits with it, on both of its backbones. On the dilated ResNet
(:class:`~fss.backbones.DilatedResNet`) or VGG-16-BN (:class:`~fss.backbones.VGG16BN`, where
``layer2`` is first resized bilinearly to ``layer3``'s stride-16 grid, as the reference does; the
Gram matrices then compare that resized map), for an episode with query q and K supports (image, mask m):

1. features: ``layer2``, ``layer3`` of the query and the supports, ``layer4`` of the query;
   ``layer4`` of each support is computed from its **masked** ``layer3`` map (masking place 1);
2. meta learner (PFENet's): ``down_query``/``down_supp`` (1x1 convolution of ``cat(layer3, layer2)``
   to ``reduce_dim``) and the support prototype, the masked average of the reduced support map
   (masking place 2: ``sum(masked) / (sum(mask) + 5e-4)``); the prior mask: for each query position
   of ``layer4`` the largest cosine similarity with the support's masked ``layer4`` positions
   (masking place 3), min-max normalised; ``init_merge(cat(query, prototype, prior))``, ASPP,
   two residual blocks, a classifier: ``meta`` logits [B, 2, h, w];
3. base learner: PSPNet's pyramid pooling and classifier on the query's ``layer4``: ``base`` logits
   [B, 1 + C_base, h, w] (background and the C_base base classes of the fold), frozen;
4. scene difference: ``||G(q) - G(s)||_F / C`` of the channel Gram matrices of ``layer2`` (cosine
   normalised), per shot; with K > 1 a small learned reweighting (``kshot_rw``) of the sorted
   differences gives softmax weights over the shots that also weight the K priors and prototypes;
5. ensemble: ``gram_merge`` mixes each meta probability map with the scene difference; the base
   learner's probability of *any* base class (in training: any base class but the episode's own)
   is mixed into the background by ``cls_merge``: ``final`` = [merged background, meta foreground].

Masking (``model.masking``): the reference multiplies support features by the mask in the three
places marked above; each place is ``masking(plain, masked_input, mask)`` on that place's features,
where ``masked_input`` are the same features computed from the input-masked support image. FM is
then exactly the reference; IM uses the masked image's ``layer3``/``layer4``/reduced map instead
(so its prototype also sums the features of the masked image's background); HM takes FM where it
is positive, else IM; ``none`` leaves the features unmasked (the prototype's denominator stays the
mask area). The Gram matrices always compare the plain images (the scene, not the object).

Training (``training_loss``): ``CE(final) + aux_weight * CE(meta) + base_weight * CE(base, base
labels)``, the reference's ``main_loss + aux_weight1 * aux_loss1 + aux_weight2 * aux_loss2`` (its
``loss_train``), each term logged (``train/loss_main``, ``train/loss_aux_meta``, ``train/loss_base``).
The base term carries no gradient (the base learner is frozen), so it moves the logged total, not the
training; it needs the query's class map (``data.class_maps: true``; without one it is left out, with
a warning). Its labels are the reference's base annotation: each base class at its channel, every
other class background, 255 ignored. As in the reference (whose ``fix_bn`` only fixes BatchNorm), the
base learner's dropout is active in training, in the ensemble's base map and in this loss alike.

FS-CS (``way_logits``, docs/fscs.md): each of the N ways is a BAM episode of its K shots, all B*N in one
forward (the query's backbone features computed once); in training each way leaves its own class out
of the base map. FS-CS training uses the iFSL loss only: the auxiliary meta and base terms are left out.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fss.backbones import FeatureBackbone, StagedBackbone
from fss.backbones.dilated_resnet import reference_backbone_key
from fss.masking import SupportMasking, input_mask, resize_mask
from fss.metrics import IGNORE_INDEX
from fss.models.base import FewShotSegmenter, _as_shots

#: the prototype's masked average divides by the mask area plus this (the reference's)
AREA_EPS = 5e-4
#: cosine similarity denominators get this added (the reference's)
COSINE_EPS = 1e-7
#: the references' backbones, cut in stages: the support's ``layer4`` is run from its masked ``layer3``


def gram_matrix(feat: Tensor) -> Tensor:
    """Cosine-normalised channel Gram matrices [N, C, C] of features [N, C, h, w]."""
    flat = feat.flatten(2)  # [N, C, hw]
    norms = flat.norm(dim=2, keepdim=True)  # [N, C, 1]
    return flat @ flat.transpose(1, 2) / (norms @ norms.transpose(1, 2) + COSINE_EPS)


def prior_mask(query: Tensor, support: Tensor) -> Tensor:
    """PFENet's prior [N, 1, h, w]: per query position, the best cosine similarity with any support
    position, min-max normalised over the query positions.

    Args:
        query: [N, C, h, w] (the query's ``layer4``).
        support: [N, C, h', w'] (the support's masked ``layer4``).
    """
    q = query.flatten(2)  # [N, C, hw]
    s = support.flatten(2).transpose(1, 2)  # [N, h'w', C]
    cosine = (s @ q) / (s.norm(dim=2, keepdim=True) @ q.norm(dim=1, keepdim=True) + COSINE_EPS)
    best = cosine.max(dim=1).values  # [N, hw]
    low, high = best.min(dim=1, keepdim=True).values, best.max(dim=1, keepdim=True).values
    return ((best - low) / (high - low + COSINE_EPS)).view(query.shape[0], 1, *query.shape[-2:])


class ASPP(nn.Module):
    """The meta learner's atrous pyramid: image pooling, 1x1, and 3x3 at dilations 6, 12, 18 -> 5C channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        kernels = ((1, 1), (1, 1), (3, 6), (3, 12), (3, 18))  # (kernel, dilation); the first pools
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, k, padding=d if k == 3 else 0, dilation=d), nn.ReLU())
            for k, d in kernels
        )
        for branch in self.branches:
            nn.init.kaiming_normal_(branch[0].weight)

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, h, w] -> [N, 5C, h, w]."""
        pooled = self.branches[0](x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        return torch.cat([pooled, *(branch(x) for branch in self.branches[1:])], dim=1)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: the input and its average pools at ``bins`` (reduced, upsampled) -> 2C channels."""

    def __init__(self, channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(channels, reduced, 1, bias=False),
                nn.BatchNorm2d(reduced),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size, mode="bilinear", align_corners=True) for s in self.stages]
        return torch.cat([x, *pooled], dim=1)


class PSPHead(nn.Module):
    """BAM's base learner: pyramid pooling and a classifier, ``layer4`` [N, C, h, w] -> logits [N, classes, h, w].

    Args:
        channels: C of the backbone's deepest map (2048).
        classes: 1 + the number of base classes (PASCAL: 16, COCO: 61).
        hidden: channels of the classifier's 3x3 convolution (512).
    """

    def __init__(self, channels: int, classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.ppm = PyramidPooling(channels)
        self.classifier = nn.Sequential(
            nn.Conv2d(2 * channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=0.1),
            nn.Conv2d(hidden, classes, 1),
        )

    def forward(self, feat: Tensor) -> Tensor:
        return self.classifier(self.ppm(feat))


def base_class_labels(classes: Tensor, base_class_ids: Tensor) -> Tensor:
    """The base learner's labels: class maps [...] (0 background, ``c + 1`` for class c, 255 ignore) ->
    the channel of each base class (``1 + i`` for ``base_class_ids[i]``), 0 for every other class, 255 kept.

    ``base_class_ids`` [C]: global class ids (0-based) of channels 1..C; -1 entries (unknown) match nothing.
    """
    table = torch.zeros(256, dtype=torch.long, device=classes.device)
    table[IGNORE_INDEX] = IGNORE_INDEX
    known = base_class_ids >= 0
    channels = torch.arange(1, len(base_class_ids) + 1, device=classes.device)
    table[base_class_ids[known] + 1] = channels[known]
    return table[classes.long().clamp(0, 255)]


def _reduce(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 convolution (no bias), ReLU, channel dropout 0.5: ``down_query`` / ``down_supp``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(p=0.5)
    )


def _mixing_conv() -> nn.Conv2d:
    """A 2 -> 1 1x1 convolution without bias that starts as "take the first input" (weights [1, 0])."""
    conv = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0]).view_as(conv.weight))
    return conv


class BAMLearner(nn.Module):
    """The trainable part of BAM: the meta learner, the ensemble and the k-shot reweighting.

    Args:
        feat_channels: channels of ``cat(layer3, layer2)`` (1536 on a ResNet-50).
        reduce_dim: channels of the meta learner (256).
        shots: K the model is trained for; K > 1 adds ``kshot_rw``.
        kshot_trans_dim: hidden width of ``kshot_rw`` (2); 0: one K x K linear map started at the mean.
    """

    def __init__(self, feat_channels: int, reduce_dim: int = 256, shots: int = 1, kshot_trans_dim: int = 2):
        super().__init__()
        self.down_query = _reduce(feat_channels, reduce_dim)
        self.down_supp = _reduce(feat_channels, reduce_dim)
        self.init_merge = nn.Sequential(
            nn.Conv2d(2 * reduce_dim + 1, reduce_dim, 1, bias=False), nn.ReLU(True)
        )
        self.aspp = ASPP(reduce_dim)
        self.res1 = nn.Sequential(nn.Conv2d(5 * reduce_dim, reduce_dim, 1, bias=False), nn.ReLU(True))
        self.res2 = nn.Sequential(
            nn.Conv2d(reduce_dim, reduce_dim, 3, padding=1, bias=False),
            nn.ReLU(True),
            nn.Conv2d(reduce_dim, reduce_dim, 3, padding=1, bias=False),
            nn.ReLU(True),
        )
        self.meta_classifier = nn.Sequential(
            nn.Conv2d(reduce_dim, reduce_dim, 3, padding=1, bias=False),
            nn.ReLU(True),
            nn.Dropout2d(p=0.1),
            nn.Conv2d(reduce_dim, 2, 1),
        )
        self.gram_merge = _mixing_conv()
        self.cls_merge = _mixing_conv()
        self.shots = shots
        if shots > 1:
            if kshot_trans_dim == 0:
                self.kshot_rw = nn.Conv2d(shots, shots, 1, bias=False)
                nn.init.constant_(self.kshot_rw.weight, 1.0 / shots)
            else:
                self.kshot_rw = nn.Sequential(
                    nn.Conv2d(shots, kshot_trans_dim, 1), nn.ReLU(True), nn.Conv2d(kshot_trans_dim, shots, 1)
                )

    def shot_weights(self, differences: Tensor) -> Tensor:
        """Scene differences [B, K, 1, 1] -> shot weights [B, K, 1, 1].

        One shot: 1. K shots as trained: the reference's reweighting (``kshot_rw`` on the differences
        sorted ascending, put back in shot order, softmax over the shots). Another K than trained
        for: the mean (1/K each).
        """
        shots = differences.shape[1]
        if shots == 1:
            return torch.ones_like(differences)
        if shots != self.shots:
            return torch.full_like(differences, 1.0 / shots)
        ordered, order = differences.sort(dim=1)
        weights = self.kshot_rw(ordered).gather(1, order.argsort(dim=1))
        return weights.softmax(dim=1)

    def meta(self, query: Tensor, prototype: Tensor, prior: Tensor) -> Tensor:
        """Reduced query [B, D, h, w], prototype [B, D, 1, 1], prior [B, 1, h, w] -> meta logits [B, 2, h, w]."""
        merged = self.init_merge(torch.cat([query, prototype.expand_as(query), prior], dim=1))
        x = self.res1(self.aspp(merged))
        return self.meta_classifier(self.res2(x) + x)

    def ensemble(self, meta: Tensor, base: Tensor, difference: Tensor, own_class: Tensor | None) -> Tensor:
        """Meta logits [B, 2, h, w], base logits [B, 1+C, h, w], difference [B, 1, 1, 1] -> final [B, 2, h, w].

        ``own_class`` [B] (training): the episode's base-learner channel, left out of the base map.
        """
        meta_prob, base_prob = meta.softmax(dim=1), base.softmax(dim=1)
        if own_class is None:
            base_map = base_prob[:, 1:].sum(dim=1, keepdim=True)
        else:
            keep = torch.ones_like(base_prob[:, :, 0, 0])  # [B, 1+C]
            keep[:, 0] = 0
            keep[torch.arange(len(own_class)), own_class] = 0
            base_map = (base_prob * keep[:, :, None, None]).sum(dim=1, keepdim=True)
        difference = difference.expand_as(meta_prob[:, :1])
        meta_bg = self.gram_merge(torch.cat([meta_prob[:, :1], difference], dim=1))
        meta_fg = self.gram_merge(torch.cat([meta_prob[:, 1:], difference], dim=1))
        background = self.cls_merge(torch.cat([meta_bg, base_map], dim=1))
        return torch.cat([background, meta_fg], dim=1)


class PrototypeFeatures:
    """The frozen features of the prototype family (BAM, NTRENet): a mixin of :class:`FewShotSegmenter`
    subclasses that read 3 levels (``layer2``, ``layer3``, ``layer4`` on the dilated ResNet).

    The support's ``layer4`` is computed from its masked ``layer3`` (the models' first masking place).
    ``_last`` (set by ``_select_maps``) holds the index of each level's last map in the backbone's output.
    """

    backbone: FeatureBackbone
    masking: SupportMasking
    levels: tuple[int, ...]

    def _select_maps(self) -> list[int]:
        """Record the last map of each selected level; return their channels (``layer2``, ``layer3``, ``layer4``)."""
        info = self.backbone.feature_info
        self._last = [max(i for i, f in enumerate(info) if f.level == level) for level in self.levels]
        return [info[i].channels for i in self._last]

    def _levels_of(self, feats: list[Tensor]) -> list[Tensor]:
        """The last map of each selected level, resized to the middle level's grid when sizes differ."""
        maps = [feats[i] for i in self._last]
        size = maps[1].shape[-2:]
        return [
            m if m.shape[-2:] == size else F.interpolate(m, size, mode="bilinear", align_corners=True)
            for m in maps
        ]

    def _episode_features(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor
    ) -> tuple[tuple[int, int], Tensor, tuple[Any, ...]]:
        """``(batch, shots)``, the support masks [B*K, H, W] as float (shots flattened) and
        :meth:`_backbone_features` of the episode (support images [B, K, 3, H, W] or [B, 3, H, W]).

        FS-CS (:meth:`way_logits`): support images [B, N, K, 3, H, W] and masks [B, N, K, H, W] are
        B*N episodes (way-minor: episode ``b*N + n`` is way n of query b) of one batch: ``batch`` is
        B*N; the query's backbone features are computed once and repeated for its N ways.
        """
        ways = 1
        if support_imgs.dim() == 6:  # FS-CS: the N ways of each query become N episodes
            ways = support_imgs.shape[1]
            support_imgs, support_masks = support_imgs.flatten(0, 1), support_masks.flatten(0, 1)
        support_imgs, support_masks = _as_shots(support_imgs, support_masks)
        batch, shots = support_masks.shape[:2]
        s_mask = support_masks.flatten(0, 1).float()
        query, *supports = self._backbone_features(query_img, support_imgs.flatten(0, 1), s_mask)
        if ways > 1:
            query = [f.repeat_interleave(ways, dim=0) for f in query]
        return (batch, shots), s_mask, (query, *supports)

    def _fscs_logits(self, logits: Tensor, support_masks: Tensor) -> Tensor:
        """Logits [B*N, 2, h, w] of the B*N way episodes -> the FS-CS way logits [B, N, 1, 2, h, w]."""
        return logits.unflatten(0, tuple(support_masks.shape[:2])).unsqueeze(2)

    def _backbone_features(
        self, query_img: Tensor, s_img: Tensor, s_mask: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None, Tensor, Tensor | None]:
        """Frozen features: query [f2, f3, f4], plain supports [f2, f3], input-masked supports [f2, f3]
        (None unless the strategy needs them), and the supports' ``layer4``: from the masked
        ``layer3`` (place 1) and from the masked image's ``layer3`` (None unless needed)."""
        masking = self.masking
        needs_masked = masking.needs_masked_input
        parts = [query_img, s_img] + ([input_mask(s_img, s_mask)] if needs_masked else [])
        sizes = [p.shape[0] for p in parts]
        with torch.no_grad():
            if isinstance(self.backbone, StagedBackbone):
                f1 = self.backbone.stem(torch.cat(parts))
                f1, f2, f3 = self.backbone.run_stages(f1, 1, 3)
                if f2.shape[-2:] != f3.shape[-2:]:  # VGG: layer2 (stride 8) to layer3's grid (16)
                    f2 = F.interpolate(f2, f3.shape[-2:], mode="bilinear", align_corners=True)
                split2, split3 = f2.split(sizes), f3.split(sizes)
                plain3, masked3 = split3[1], split3[2] if needs_masked else None
                layer4_in = [split3[0], *masking([plain3], [masked3] if needs_masked else None, s_mask)]
                if needs_masked:
                    layer4_in.append(masked3)
                f4 = self.backbone.run_stages(torch.cat(layer4_in), 4)[0].split(sizes)
                support4, masked4 = f4[1], f4[2] if needs_masked else None
            else:  # any other backbone: every level from the images, the deepest masked at place 3 only
                f2, f3, f4 = self._levels_of(self.backbone(torch.cat(parts)))
                split2, split3, f4 = f2.split(sizes), f3.split(sizes), f4.split(sizes)
                support4, masked4 = f4[1], f4[2] if needs_masked else None
        query = [split2[0], split3[0], f4[0]]
        plain = [split2[1], split3[1]]
        masked = [split2[2], split3[2]] if needs_masked else None
        return query, plain, masked, support4, masked4


class BAM(PrototypeFeatures, FewShotSegmenter):
    """BAM: a PFENet-style meta learner, a frozen PSPNet base learner and their ensemble (module docstring).

    Args:
        backbone: a :class:`~fss.backbones.DilatedResNet` or :class:`~fss.backbones.VGG16BN` (the
            reference's); any other ``FeatureBackbone`` with 3 levels also runs (its maps are resized
            to the middle level's grid, and the support's deepest map is masked, not recomputed from
            a masked ``layer3``).
        masking: a strategy or a name of ``fss.masking.MASKINGS`` (``fm`` = the reference).
        weights: weights of a backbone given by name.
        base_learner: a checkpoint of the base learner: one written by ``fss fit`` with a
            :class:`~fss.models.PSPNet` config (stage 1, ``configs/pascal_bam_base.yaml``) or the
            reference's PSPNet ``best.pth``. It sets the base learner *and the backbone* (BAM's backbone is the base
            learner's fine-tuned encoder). None: random (e.g. before ``load_reference_state_dict``).
        base_classes: global class ids (0-based) of the base learner's channels 1..C, in order (the
            fold's training classes, ascending). None: those recorded in an fss ``base_learner``
            checkpoint, else the data's training classes when fitting (the ensemble leaves the
            episode's class out in training).
        num_base_classes: C when neither ``base_classes`` nor an fss checkpoint gives it (PASCAL 15,
            COCO 60).
        reduce_dim: channels of the meta learner (256); the base learner's classifier has twice as many.
        shots: K the model trains for (K > 1: the learned shot reweighting).
        kshot_trans_dim: hidden width of the shot reweighting (2).
        aux_weight: weight of the meta learner's auxiliary loss (``aux_weight1``, 1.0).
        base_weight: weight of the base learner's loss in the total (``aux_weight2``, 1.0); it has no
            gradient, so it only shifts the logged ``train/loss`` (0: the total leaves it out).

    Example:
        >>> model = BAM("dilated_resnet50", masking="fm", base_learner="runs/base/fold0/best.ckpt")
        >>> logits = model(query_img, support_imgs, support_masks)  # [B, 2, H, W]
    """

    learner_name = "learner"
    num_levels = 3
    fuses_shots = True
    init_only_args = ("base_learner",)

    def __init__(
        self,
        backbone: FeatureBackbone | str = "dilated_resnet50",
        masking: SupportMasking | str = "fm",
        weights: str | None = "pretrained",
        base_learner: str | None = None,
        base_classes: list[int] | None = None,
        num_base_classes: int = 15,
        reduce_dim: int = 256,
        shots: int = 1,
        kshot_trans_dim: int = 2,
        aux_weight: float = 1.0,
        base_weight: float = 1.0,
    ) -> None:
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        channels = self._select_maps()  # layer2, layer3, layer4
        self.aux_weight = aux_weight
        self.base_weight = base_weight
        recorded = _read_base_learner(base_learner) if base_learner else None
        if base_classes is None and recorded is not None:
            base_classes = recorded[1]
        if base_classes is not None:
            num_base_classes = len(base_classes)
            self.init_args["num_base_classes"] = num_base_classes  # what a checkpoint rebuilds
        #: global class id of each base-learner channel 1..C ([-1] * C when unknown)
        self.register_buffer(
            "base_class_ids",
            torch.tensor(base_classes if base_classes is not None else [-1] * num_base_classes),
            persistent=False,
        )
        self.learner = BAMLearner(channels[0] + channels[1], reduce_dim, shots, kshot_trans_dim)
        self.base_learner = PSPHead(channels[2], 1 + num_base_classes, hidden=2 * reduce_dim)
        self.base_learner.requires_grad_(False)
        if recorded is not None:
            self._load_base_learner(recorded[0], base_learner)
        self.base_learner.eval()

    # -- stage 1's checkpoint ----------------------------------------------------------------------
    def _load_base_learner(self, sd: dict[str, Tensor], source: str) -> None:
        """Backbone and base-learner weights from a stage-1 state_dict (ours or the reference PSPNet's)."""
        backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
        head = {k.removeprefix("decoder."): v for k, v in sd.items() if k.startswith("decoder.")}
        if not head:  # the reference PSPNet: layer0..4 (and encoder.*), ppm.*, cls.*
            backbone = {k: v for k, v in sd.items() if re.match(r"layer[0-4]\.", k)}
            head = {_reference_head_key(k): v for k, v in sd.items() if k.startswith(("ppm.", "cls."))}
        if isinstance(self.backbone, StagedBackbone):
            self.backbone.load_reference_state_dict(backbone, source=source)
        else:
            self.backbone.load_state_dict(backbone)
        try:
            self.base_learner.load_state_dict(head)
        except RuntimeError as err:
            raise ValueError(
                f"model.net.init_args.base_learner {source}: its head does not fit this BAM (base classes "
                f"{len(self.base_class_ids)}, reduce_dim {self.learner.init_merge[0].out_channels}): {err}"
            ) from None

    def set_train_classes(self, class_ids: list[int]) -> None:
        """The data's training classes must be the base learner's classes (a fold mismatch otherwise);
        with unknown base classes (no fss base-learner checkpoint, no ``base_classes``) they become them."""
        known = self.base_class_ids.tolist()
        if all(c < 0 for c in known):
            if len(class_ids) != len(known):
                raise ValueError(
                    f"BAM: the data has {len(class_ids)} training classes but the base learner has "
                    f"{len(known)} (model.net.init_args.num_base_classes)"
                )
            self.base_class_ids.copy_(torch.tensor(sorted(class_ids)))
        elif sorted(class_ids) != known:
            raise ValueError(
                f"BAM: the base learner was trained on the classes {known}, but the data's training classes "
                f"are {sorted(class_ids)}: give the base learner of this fold (model.net.init_args.base_learner) "
                "or the data's fold (data.fold)"
            )

    def train(self, mode: bool = True) -> BAM:
        """The frozen base learner's BatchNorm stays in eval mode; its dropout follows ``mode``, as in the
        reference (whose ``fix_bn`` puts only BatchNorm layers in eval mode)."""
        super().train(mode)
        for module in self.base_learner.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    # -- forward -------------------------------------------------------------------------------------
    def forward_outputs(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, class_id: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``final``, ``meta`` [B, 2, h, w] and ``base`` [B, 1+C, h, w] logits at ``layer3``'s grid (stride 8; VGG: 16).

        Args:
            query_img: [B, 3, H, W]; support_imgs: [B, K, 3, H, W]; support_masks: [B, K, H, W]
                (or [B, N, K, ...] for N ways: B*N episodes, see ``_episode_features``).
            class_id: [B] global class ids of the episodes (training): the ensemble leaves each
                episode's own class out of the base learner's map; None: every base class counts.
        """
        (batch, shots), s_mask, (query, plain, masked, support4, masked4) = self._episode_features(
            query_img, support_imgs, support_masks
        )
        learner, masking = self.learner, self.masking
        # meta learner: reduced query; prototypes by masked average pooling (place 2)
        query_red = learner.down_query(torch.cat([query[1], query[0]], dim=1))
        conv_relu, dropout = learner.down_supp[:2], learner.down_supp[2]
        support_red = conv_relu(torch.cat([plain[1], plain[0]], dim=1))
        masked_red = conv_relu(torch.cat([masked[1], masked[0]], dim=1)) if masked is not None else None
        pooled = dropout(masking([support_red], None if masked_red is None else [masked_red], s_mask)[0])
        area = resize_mask(s_mask, pooled.shape[-2:]).sum(dim=(2, 3), keepdim=True) + AREA_EPS
        prototypes = (pooled.sum(dim=(2, 3), keepdim=True) / area).unflatten(0, (batch, shots))  # [B,K,D,1,1]
        # priors from the masked layer4 (place 3)
        support4 = masking([support4], None if masked4 is None else [masked4], s_mask)[0]
        query4 = query[2].repeat_interleave(shots, dim=0) if shots > 1 else query[2]
        priors = prior_mask(query4, support4)
        if priors.shape[-2:] != query[1].shape[-2:]:
            priors = F.interpolate(priors, query[1].shape[-2:], mode="bilinear", align_corners=True)
        priors = priors.unflatten(0, (batch, shots))  # [B, K, 1, h, w]
        # scene differences of the plain images (layer2 Gram matrices), shot weights
        gram_q = gram_matrix(query[0])
        gram_s = gram_matrix(plain[0]).unflatten(0, (batch, shots))
        channels = gram_q.shape[-1]
        differences = (gram_q.unsqueeze(1) - gram_s).norm(dim=(2, 3)) / channels  # ||ones(C, C)||_F = C
        weights = learner.shot_weights(differences.view(batch, shots, 1, 1))  # [B, K, 1, 1]
        difference = (weights * differences.view(batch, shots, 1, 1)).sum(dim=1, keepdim=True)
        prior = (weights.unsqueeze(2) * priors).sum(dim=1)  # [B, 1, h, w]
        prototype = (weights.unsqueeze(2) * prototypes).sum(dim=1)  # [B, D, 1, 1]
        meta = learner.meta(query_red, prototype, prior)
        with torch.no_grad():
            base = self.base_learner(query[2])
        own = None if class_id is None else self.base_channels(class_id)
        final = learner.ensemble(meta, base, difference, own)
        return {"final": final, "meta": meta, "base": base}

    def base_channels(self, class_id: Tensor) -> Tensor:
        """The base learner's channel (1..C) of each global class id [B]; a clear error for unknown ones."""
        match = self.base_class_ids.unsqueeze(0) == class_id.unsqueeze(1)  # [B, C]
        if not match.any(dim=1).all():
            known = "unknown" if (self.base_class_ids < 0).all() else self.base_class_ids.tolist()
            raise ValueError(
                f"BAM training: episode classes {class_id[~match.any(dim=1)].tolist()} are not base classes of "
                f"the base learner (base classes: {known}). Give model.net.init_args.base_learner (an fss "
                "base-learner checkpoint of this fold) or model.net.init_args.base_classes."
            )
        return match.float().argmax(dim=1) + 1

    def way_logits(
        self,
        query_img: Tensor,
        support_imgs: Tensor,
        support_masks: Tensor,
        way_classes: Tensor | None = None,
    ) -> Tensor:
        """FS-CS: the ensemble's ``final`` logits [B, N, 1, 2, h, w] of each way, at ``layer3``'s grid.

        Each way is a BAM episode of its K shots (one :meth:`forward_outputs` on the B*N episodes, the
        query's backbone features computed once). ``way_classes`` [B, N] (training): each way's own
        class is left out of the base learner's map, as the episode's class in FS-S training; None
        (evaluation): every base class counts.
        """
        class_id = None if way_classes is None else way_classes.flatten()
        final = self.forward_outputs(query_img, support_imgs, support_masks, class_id)["final"]
        return self._fscs_logits(final, support_masks)

    def forward_shots(self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor) -> Tensor:
        """The ensemble's logits [B, 1, 2, H, W] (all K shots fused), upsampled to the query size."""
        final = self.forward_outputs(query_img, support_imgs, support_masks)["final"]
        return _upsample(final, query_img.shape[-2:]).unsqueeze(1)

    def training_loss(
        self, batch: dict[str, Any], criterion: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``criterion(final) + aux_weight * criterion(meta) + base_weight * CE(base, base labels)``, the
        episode's class left out of the base map (module docstring).

        Returns the loss, the final logits [B, 2, H, W] and the terms (``main``, ``aux_meta`` and, when
        the batch has the query's class map ``query_classes``, ``base``).
        """
        out = self.forward_outputs(
            batch["query_img"], batch["support_imgs"], batch["support_masks"], batch["class_id"]
        )
        size, target = batch["query_img"].shape[-2:], batch["query_mask"]
        final = _upsample(out["final"], size)
        main, aux = criterion(final, target), criterion(_upsample(out["meta"], size), target)
        terms = {"main": main, "aux_meta": aux}
        loss = main + self.aux_weight * aux
        if "query_classes" in batch:  # the reference's aux_loss2: plain CE over 1 + C classes, no gradient
            labels = base_class_labels(batch["query_classes"], self.base_class_ids)
            terms["base"] = F.cross_entropy(_upsample(out["base"], size), labels, ignore_index=IGNORE_INDEX)
            loss = loss + self.base_weight * terms["base"]
        elif self.base_weight:
            warnings.warn(
                "BAM: the batch has no query class map, so the base learner's loss (the reference's "
                "aux_loss2, train/loss_base) is left out of train/loss; set data.class_maps: true to log it",
                stacklevel=2,
            )
        return loss, final, terms

    # -- reference checkpoints -----------------------------------------------------------------------
    def load_reference_state_dict(self, state_dict: dict[str, Tensor] | str | Path) -> None:
        """Load a checkpoint of the reference BAM (``train_epoch_*.pth`` / ``*.pth`` with ``state_dict``).

        Its names map to ours: ``layer0..4`` -> ``backbone.*`` (``layer0.<i>`` -> the stem's names),
        ``learner_base.0/1`` -> ``base_learner.ppm/classifier``, ``ASPP_meta.layer6_<i>`` ->
        ``learner.aspp.branches.<i>``, ``res1_meta``/``res2_meta``/``cls_meta`` -> ``learner.res1``/
        ``res2``/``meta_classifier``, the rest under ``learner.``. Checkpoints in our names load as they are.
        """
        if isinstance(state_dict, (str, Path)):
            state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
        if isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
        backbone_key = getattr(self.backbone, "reference_key", reference_backbone_key)
        ours = {}
        for key, value in state_dict.items():
            ours[reference_bam_key(key.removeprefix("module."), backbone_key)] = value
        super().load_reference_state_dict(ours)


def reference_bam_key(key: str, backbone_key: Callable[[str], str] = reference_backbone_key) -> str:
    """A key of the reference BAM's state_dict -> ours (keys already in our names pass unchanged).

    ``backbone_key`` maps the backbone's ``layer0..4`` keys: the dilated ResNet's (default) renames
    the stem, :meth:`VGG16BN.reference_key <fss.backbones.VGG16BN.reference_key>` keeps them.
    """
    if re.match(r"layer[0-4]\.", key):
        return "backbone." + backbone_key(key)
    rules = (
        (r"learner_base\.0\.features\.", "base_learner.ppm.stages."),
        (r"learner_base\.1\.", "base_learner.classifier."),
        (r"ASPP_meta\.layer6_(\d)\.", r"learner.aspp.branches.\1."),
        (r"res1_meta\.", "learner.res1."),
        (r"res2_meta\.", "learner.res2."),
        (r"cls_meta\.", "learner.meta_classifier."),
        (r"(down_query|down_supp|init_merge|gram_merge|cls_merge|kshot_rw)\.", r"learner.\1."),
    )
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return re.sub("^" + pattern, replacement, key)
    return key


def _reference_head_key(key: str) -> str:
    """The reference PSPNet's head keys (``ppm.features.<i>``, ``cls.<j>``) -> ours."""
    return re.sub(r"^ppm\.features\.", "ppm.stages.", re.sub(r"^cls\.", "classifier.", key))


def _read_base_learner(path: str) -> tuple[dict[str, Tensor], list[int] | None]:
    """The state_dict of a base-learner checkpoint and its recorded base classes (None in reference files)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"model.net.init_args.base_learner: {file} not found. Train the base learner first (stage 1: "
            "fss fit --config configs/pascal_bam_base.yaml --data.fold N) and pass its checkpoint, or the "
            "reference's initmodel/PSPNet/<dataset>/split<N>/resnet50/best.pth."
        )
    ckpt = torch.load(file, map_location="cpu", weights_only=False)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("net.") for k in sd):  # a Lightning checkpoint of fss's stage 1 (PSPNet)
        sd = {k.removeprefix("net."): v for k, v in sd.items() if k.startswith("net.")}
    classes = sd.pop("base_class_ids", None)
    return sd, (classes.tolist() if classes is not None and (classes >= 0).all() else None)


def _upsample(logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    if logits.shape[-2:] == tuple(size):
        return logits
    return F.interpolate(logits, tuple(size), mode="bilinear", align_corners=True)
