"""NTRENet (Liu, Zhang, Zhang & Han, "Learning Non-target Knowledge for Few-shot Semantic Segmentation",
CVPR 2022): a PFENet-style prototype network that also learns what is *not* the target: a learned
background prototype (background mining, BMM), the query regions that are neither background nor
target (distracting objects, DOM), and a prototypical contrastive loss against those distractors.

Same parameter shapes and forward computation as the public code (LIUYUANWEI98/NERTNet,
``model/ourmodel.py`` and ``model/prototypical_contrast.py``); a test compares logits and every training
loss term with it. On the dilated ResNet (:class:`~fss.backbones.DilatedResNet`), for an episode with
query q and K supports (image, mask m):

1. features: ``layer2``, ``layer3`` of the query and the supports, ``layer4`` of the query; ``layer4``
   of each support is computed from its **masked** ``layer3`` (masking place 1);
2. ``down_query``/``down_supp`` reduce ``cat(layer3, layer2)`` to ``reduce_dim`` channels; the support
   prototype is the masked average of the reduced support map (masking place 2:
   ``sum(masked) / (sum(mask) + 5e-4)``); the prior: per query position of ``layer4`` the largest cosine
   similarity with the support's masked ``layer4`` (masking place 3), min-max normalised. K shots: the
   mean of the K prototypes and of the K priors (the reference's evaluation path);
3. background mining: ``bg_cls(bg_res1(x) + x)`` with ``x = down_bg(cat(query, bg_prototype))``: the
   query's background logits [B, 2, h, w] (channel 1: background, learned without labels of it);
4. a pyramid over ``ppm_scales`` (PFENet's, square bins 60, 30, 15, 8): per bin ``init_merge1`` mixes
   the pooled query with the background prototype, ``init_merge2`` adds the support prototype and the
   prior, ``initial_beta_conv`` + ``initial_inner_cls`` give an initial prediction; the distracting
   objects are where both the initial prediction and the background map say "no" (their argmaxes are
   0), and their average query feature (the confused prototype) joins through ``init_merge3``; then
   ``alpha_conv`` (the previous bin's output), ``beta_conv``, ``inner_cls``;
5. ``res1`` on the concatenated bins, ``res2`` (residual), ``cls``: logits [B, 2, h, w].

Masking (``model.masking``): each of the three places above is ``masking(plain, masked_input, mask)``
on that place's features, where ``masked_input`` are the same features computed from the input-masked
support image (place 2: the reduced map of the masked image's ``cat(layer3, layer2)``). FM is exactly the
reference; the support's *unmasked* reduced map (its background branch and the contrastive loss) is
never masked.

Training (``training_loss``), as the reference's ``train.py`` combines it: ``main + aux_weight * (bg +
0.4 * aux1 + 0.6 * aux2 + 0.01 * contrast)`` with ``main`` the CE of the final logits, ``aux1`` / ``aux2``
the mean CE of the bins' ``inner_cls`` / ``initial_inner_cls`` logits, ``bg`` the background loss of the
query and of each support (:func:`background_loss`, averaged over the K + 1 images) and ``contrast`` the
prototypical contrastive loss (:class:`PrototypeContrast`) with its memory bank of distractor
prototypes per class, which lives across training steps.

FS-CS (``way_logits``, docs/fscs.md): each of the N ways is an NTRENet episode of its K shots, all B*N in
one forward (the query's backbone features computed once). FS-CS training uses the iFSL loss only: the
auxiliary terms above are left out (so the background-mining head, trained by its own loss only, stays
as initialised or as loaded).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fss.backbones import FeatureBackbone
from fss.backbones.dilated_resnet import reference_backbone_key
from fss.masking import SupportMasking, resize_mask
from fss.models.bam import AREA_EPS, PrototypeFeatures, _reduce, _upsample, prior_mask
from fss.models.base import FewShotSegmenter, _as_shots

#: weights of the auxiliary terms inside ``aux_weight * (...)`` (the reference's forward)
INNER_WEIGHT, INITIAL_WEIGHT, CONTRAST_WEIGHT = 0.4, 0.6, 0.01
#: weight of the "everything is background" CE inside the background loss (the reference's ``erfa``)
ALL_BACKGROUND_WEIGHT = 0.5


def _resize(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


def _merge(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 convolution without bias and ReLU (``init_merge*``, ``alpha_conv``, ``res1``)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU(inplace=True))


def _double_conv(channels: int) -> nn.Sequential:
    """Two 3x3 convolutions without bias, each with ReLU (the residual blocks)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
    )


def _classifier(channels: int) -> nn.Sequential:
    """3x3 convolution, ReLU, channel dropout 0.1, 1x1 convolution to 2 classes."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=0.1),
        nn.Conv2d(channels, 2, 1),
    )


def is_second(logits: Tensor) -> Tensor:
    """The argmax [N, 1, h, w] (float 0/1) of 2-class logits [N, 2, h, w]; ties -> 0 as ``max(1)[1]``."""
    return (logits[:, 1:] > logits[:, :1]).to(logits.dtype)


def weighted_average(feat: Tensor, mask: Tensor) -> Tensor:
    """The masked average [N, C] of features [N, C, h, w] over a mask [N, 1, h, w] at their size
    (``sum(feat * mask) / (sum(mask) + 5e-4)``, the reference's ``Weighted_GAP``)."""
    return (feat * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + AREA_EPS)


class NTRENetLearner(nn.Module):
    """The trainable part of NTRENet (module docstring, steps 2-5), the reference's names but for
    ``initial_*`` (the reference's ``inital_*``).

    Args:
        feat_channels: channels of ``cat(layer3, layer2)`` (1536 on a ResNet-50).
        reduce_dim: channels of the learner (256).
        ppm_scales: the pyramid's bins: a size (> 1) or a fraction of the feature grid (<= 1).
        bg_prototypes: background prototypes (``bgpro_num``): ``bg_prototype`` has
            ``reduce_dim * bg_prototypes`` channels.
    """

    def __init__(
        self,
        feat_channels: int,
        reduce_dim: int = 256,
        ppm_scales: Sequence[float] = (60, 30, 15, 8),
        bg_prototypes: int = 1,
    ) -> None:
        super().__init__()
        self.ppm_scales = tuple(ppm_scales)
        d, bins = reduce_dim, len(self.ppm_scales)
        self.down_query = _reduce(feat_channels, d)
        self.down_supp = _reduce(feat_channels, d)
        self.bg_prototype = nn.Parameter(torch.zeros(1, d * bg_prototypes, 1, 1))
        self.down_bg = _reduce(d * (bg_prototypes + 1), d)
        self.bg_res1 = _double_conv(d)
        self.bg_cls = _classifier(d)
        self.init_merge1 = nn.ModuleList(_merge(d * (bg_prototypes + 1), d) for _ in range(bins))
        self.init_merge2 = nn.ModuleList(_merge(2 * d + 1, d) for _ in range(bins))
        self.init_merge3 = nn.ModuleList(_merge(2 * d, d) for _ in range(bins))
        self.initial_beta_conv = nn.ModuleList(_double_conv(d) for _ in range(bins))
        self.initial_inner_cls = nn.ModuleList(_classifier(d) for _ in range(bins))
        self.alpha_conv = nn.ModuleList(_merge(2 * d, d) for _ in range(bins - 1))
        self.beta_conv = nn.ModuleList(_double_conv(d) for _ in range(bins))
        self.inner_cls = nn.ModuleList(_classifier(d) for _ in range(bins))
        self.res1 = _merge(d * bins, d)
        self.res2 = _double_conv(d)
        self.cls = _classifier(d)

    def background(self, feat: Tensor) -> Tensor:
        """Background mining: reduced features [N, D, h, w] -> background logits [N, 2, h, w]."""
        bg = self.bg_prototype.expand(feat.shape[0], -1, *feat.shape[-2:])
        x = self.down_bg(torch.cat([feat, bg], dim=1))
        return self.bg_cls(self.bg_res1(x) + x)

    def bin_sizes(self, height: int) -> list[int]:
        """The side of each pyramid bin for a feature grid of ``height`` rows."""
        return [int(height * s) if s <= 1 else int(s) for s in self.ppm_scales]

    def pyramid(
        self, query: Tensor, prototype: Tensor, prior: Tensor, query_bg: Tensor
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The pyramid and the head (module docstring, steps 4-5).

        Args:
            query: reduced query [B, D, h, w]; prototype: [B, D, 1, 1]; prior: [B, 1, h, w];
            query_bg: the query's background logits [B, 2, h, w].

        Returns:
            logits [B, 2, h, w], the bins' ``inner_cls`` logits and their initial logits ([B, 2, s, s]).
        """
        batch, _, height, width = query.shape
        feats: list[Tensor] = []
        inner: list[Tensor] = []
        initial: list[Tensor] = []
        for i, size in enumerate(self.bin_sizes(height)):
            pooled = F.adaptive_avg_pool2d(query, size)
            bg = self.bg_prototype.expand(batch, -1, size, size)
            x = self.init_merge1[i](torch.cat([pooled, bg], dim=1))
            x = self.init_merge2[i](
                torch.cat([x, prototype.expand(-1, -1, size, size), _resize(prior, size)], 1)
            )
            x = self.initial_beta_conv[i](x) + x
            first = self.initial_inner_cls[i](x)
            # distracting objects: neither background (background map) nor target (initial prediction)
            confused = (1 - is_second(_resize(query_bg, size))) * (1 - is_second(first))
            confused_prototype = (confused * pooled).mean(dim=(2, 3), keepdim=True)
            x = self.init_merge3[i](torch.cat([x, confused_prototype.expand(-1, -1, size, size)], dim=1))
            if i > 0:
                x = self.alpha_conv[i - 1](torch.cat([x, _resize(feats[-1], size)], dim=1)) + x
            x = self.beta_conv[i](x) + x
            inner.append(self.inner_cls[i](x))
            initial.append(first)
            feats.append(_resize(x, (height, width)))
        x = self.res1(torch.cat(feats, dim=1))
        return self.cls(self.res2(x) + x), inner, initial


def background_loss(bg_logits: Tensor, fg_mask: Tensor) -> Tensor:
    """The background-mining loss of one image per row: background logits [N, 2, H, W] (at the label
    size), target masks [N, H, W] (1: target; 255 and 0: not).

    ``mean_n(sum(CE(bg, 0) * fg) / (sum(fg) + 1e-5)) + 0.5 * mean(CE(bg, 1))``: the target is not
    background (the reference's ``weighted_BCE``), everything else is pushed towards background.
    """
    log_prob = bg_logits.float().log_softmax(dim=1)
    fg = (fg_mask == 1).to(log_prob.dtype)
    on_target = (-log_prob[:, 0] * fg).sum(dim=(1, 2)) / (fg.sum(dim=(1, 2)) + 1e-5)
    return on_target.mean() - ALL_BACKGROUND_WEIGHT * log_prob[:, 1].mean()


class PrototypeContrast(nn.Module):
    """NTRENet's prototypical contrastive loss and its memory bank of negatives.

    Per episode: the anchor is the query's masked average feature over its *predicted* target, the
    positive the support's over its true mask (K shots: the mean of the K), the negatives the
    distractor prototypes (features averaged where the background map says "not background" and the
    label says "not target", of the query and of each support) of the episode's class: those of this
    batch first, then up to ``keep`` older ones from the bank (newest first), of which ``sample`` are
    drawn at random (``torch.randperm`` on the default CPU generator, so seeded runs repeat) when there
    are more. Loss: ``-log(exp(cos(a, p) / t) / sum_neg exp(cos(a, n) / t) + 1e-8)``, averaged over
    the batch.

    The bank (``bank``: global class id -> [n, D]) is state of the module, not of its ``state_dict``:
    checkpoints do not hold it and a resumed run starts with an empty bank (as the reference's resume
    does); each DDP process keeps its own. ``reset()`` empties it.
    """

    def __init__(self, temperature: float = 1.0, sample: int = 1000, keep: int = 2000) -> None:
        super().__init__()
        self.temperature, self.sample, self.keep = temperature, sample, keep
        self.bank: dict[int, Tensor] = {}

    def reset(self) -> None:
        self.bank = {}

    def update(self, negatives: Tensor, class_id: Tensor) -> None:
        """Put the distractor prototypes [B, 1 + K, D] of the batch (query, then each shot) in front, per class."""
        for cls in class_id.unique().tolist():
            # the query's of the class's episodes, then each shot's
            new = negatives[class_id == cls].transpose(0, 1).flatten(0, 1).detach().float()
            old = self.bank.get(cls)
            self.bank[cls] = new if old is None else torch.cat([new, old.to(new.device)])[: self.keep]

    def forward(
        self,
        query_feat: Tensor,
        support_feat: Tensor,
        logits: Tensor,
        query_label: Tensor,
        support_masks: Tensor,
        query_bg: Tensor,
        support_bg: Tensor,
        class_id: Tensor,
    ) -> Tensor:
        """The loss of a batch; updates the bank first (this batch's negatives take part).

        Args:
            query_feat: the reduced query [B, D, h, w]; support_feat: the reduced supports [B, K, D, h, w].
            logits: the final logits [B, 2, h, w] (the anchor's region: their argmax).
            query_label: [B, H, W] (0, 1, 255 = ignore); support_masks: [B, K, H, W].
            query_bg: [B, 2, h, w], support_bg: [B, K, 2, h, w] background logits.
            class_id: [B] the episodes' classes (the bank's keys).
        """
        batch, shots = support_feat.shape[:2]
        size = query_feat.shape[-2:]
        q_label = F.interpolate(query_label[:, None].float(), size, mode="nearest")
        q_label = torch.where(q_label == 255, torch.zeros_like(q_label), q_label)
        s_feat = support_feat.flatten(0, 1)
        s_label = F.interpolate(
            support_masks.flatten(0, 1)[:, None].float(), s_feat.shape[-2:], mode="nearest"
        )
        q_distract = F.relu(1 - is_second(query_bg) - q_label)
        s_distract = F.relu(1 - is_second(support_bg.flatten(0, 1)) - s_label)
        negatives = torch.cat(
            [
                weighted_average(query_feat, q_distract).unsqueeze(1),
                weighted_average(s_feat, s_distract).unflatten(0, (batch, shots)),
            ],
            dim=1,
        )  # [B, 1 + K, D]
        self.update(negatives, class_id)
        anchors = weighted_average(query_feat, is_second(logits)).float()  # [B, D]
        positives = weighted_average(s_feat, s_label).unflatten(0, (batch, shots)).mean(dim=1).float()
        losses = []
        for anchor, positive, cls in zip(anchors, positives, class_id.tolist()):
            neg = self.bank[cls]
            if neg.shape[0] > self.sample:
                neg = neg[torch.randperm(neg.shape[0])[: self.sample].to(neg.device)]
            pos_logit = F.cosine_similarity(anchor, positive, dim=0) / self.temperature
            neg_logits = F.cosine_similarity(anchor[None], neg, dim=1) / self.temperature
            losses.append(-torch.log(pos_logit.exp() / neg_logits.exp().sum() + 1e-8))
        return torch.stack(losses).mean()


class NTRENet(PrototypeFeatures, FewShotSegmenter):
    """NTRENet: background mining, distracting-object mining and the prototypical contrast (module docstring).

    ``masking`` acts where the reference multiplies support features by the mask: (1) the input of the
    support's ``layer4`` (its ``layer3``), (2) the reduced support map the prototype averages, (3) the
    support's ``layer4`` in the prior; the unmasked reduced support map (background mining, contrast)
    stays unmasked.

    Args:
        backbone: a :class:`~fss.backbones.DilatedResNet` (the reference's, frozen, ImageNet weights);
            any ``FeatureBackbone`` with 3 levels also runs (its maps resized to the middle level's grid,
            the support's deepest map masked rather than recomputed from a masked ``layer3``).
        masking: a strategy or a name of ``fss.masking.MASKINGS`` (``fm`` = the reference).
        weights: weights of a backbone given by name.
        reduce_dim: channels of the learner (256).
        ppm_scales: the pyramid's bins (``[60, 30, 15, 8]``; values <= 1: fractions of the feature grid).
        bg_prototypes: number of learned background prototypes (the reference's ``bgpro_num``, 1; its
            PASCAL config says 2, which its code cannot run: ``init_merge1`` there takes
            ``2 * reduce_dim`` channels; here ``init_merge1`` and ``down_bg`` take
            ``(1 + bg_prototypes) * reduce_dim``, which is the reference's model at 1).
        aux_weight: weight of everything but the main CE (the reference's ``aux_weight``, 1.0).

    Example:
        >>> model = NTRENet("dilated_resnet50", masking="hm")
        >>> logits = model(query_img, support_imgs, support_masks)  # [B, 2, H, W]
    """

    learner_name = "learner"
    num_levels = 3
    fuses_shots = True

    def __init__(
        self,
        backbone: FeatureBackbone | str = "dilated_resnet50",
        masking: SupportMasking | str = "fm",
        weights: str | None = "pretrained",
        reduce_dim: int = 256,
        ppm_scales: list[float] | None = None,
        bg_prototypes: int = 1,
        aux_weight: float = 1.0,
    ) -> None:
        ppm_scales = [60, 30, 15, 8] if ppm_scales is None else list(ppm_scales)
        if not ppm_scales or any(s <= 0 for s in ppm_scales):
            raise ValueError(
                f"NTRENet: model.net.init_args.ppm_scales must be a non-empty list of positive bin sizes "
                f"(or fractions <= 1 of the feature grid), got {ppm_scales}"
            )
        if not isinstance(bg_prototypes, int) or bg_prototypes < 1:
            raise ValueError(
                f"NTRENet: model.net.init_args.bg_prototypes must be an integer >= 1 (the reference's "
                f"bgpro_num; 1 is the reference's model), got {bg_prototypes!r}"
            )
        if reduce_dim < 1:
            raise ValueError(f"NTRENet: model.net.init_args.reduce_dim must be positive, got {reduce_dim}")
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        channels = self._select_maps()  # layer2, layer3, layer4
        self.aux_weight = aux_weight
        self.learner = NTRENetLearner(channels[0] + channels[1], reduce_dim, ppm_scales, bg_prototypes)
        self.contrast = PrototypeContrast()

    # -- forward -------------------------------------------------------------------------------------
    def forward_outputs(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, supports_too: bool = False
    ) -> dict[str, Any]:
        """Everything at the feature grid (stride 8).

        Args:
            query_img: [B, 3, H, W]; support_imgs: [B, K, 3, H, W]; support_masks: [B, K, H, W]
                (or [B, N, K, ...] for N ways: B*N episodes, see ``_episode_features``).
            supports_too: also the supports' reduced maps and background logits (training).

        Returns:
            ``out`` [B, 2, h, w] logits; ``inner`` and ``initial``: per bin [B, 2, s, s]; ``query_bg``
            [B, 2, h, w]; ``query_red`` [B, D, h, w]; the K shots' mean ``prototype`` [B, D, 1, 1] and
            ``prior`` [B, 1, h, w]; with ``supports_too``: ``support_red``
            [B, K, D, h, w] and ``support_bg`` [B, K, 2, h, w].
        """
        (batch, shots), s_mask, (query, plain, masked, support4, masked4) = self._episode_features(
            query_img, support_imgs, support_masks
        )
        learner, masking = self.learner, self.masking
        query_red = learner.down_query(torch.cat([query[1], query[0]], dim=1))
        conv_relu, dropout = learner.down_supp[:2], learner.down_supp[2]
        support_red = conv_relu(torch.cat([plain[1], plain[0]], dim=1))
        # the same dropped channels for a support's plain and input-masked maps
        keep = dropout(support_red.new_ones(*support_red.shape[:2], 1, 1))
        support_red = support_red * keep
        masked_red = None if masked is None else conv_relu(torch.cat([masked[1], masked[0]], dim=1)) * keep
        pooled = masking([support_red], None if masked_red is None else [masked_red], s_mask)[0]  # place 2
        area = resize_mask(s_mask, pooled.shape[-2:]).sum(dim=(2, 3), keepdim=True) + AREA_EPS
        prototype = (pooled.sum(dim=(2, 3), keepdim=True) / area).unflatten(0, (batch, shots)).mean(dim=1)
        support4 = masking([support4], None if masked4 is None else [masked4], s_mask)[0]  # place 3
        query4 = query[2].repeat_interleave(shots, dim=0) if shots > 1 else query[2]
        priors = _resize(prior_mask(query4, support4), query_red.shape[-2:])
        prior = priors.unflatten(0, (batch, shots)).mean(dim=1)  # [B, 1, h, w]
        query_bg = learner.background(query_red)
        out, inner, initial = learner.pyramid(query_red, prototype, prior, query_bg)
        outputs: dict[str, Any] = {
            "out": out, "inner": inner, "initial": initial, "query_bg": query_bg, "query_red": query_red,
            "prototype": prototype, "prior": prior,
        }  # fmt: skip
        if supports_too:
            outputs["support_red"] = support_red.unflatten(0, (batch, shots))
            outputs["support_bg"] = learner.background(support_red).unflatten(0, (batch, shots))
        return outputs

    def way_logits(
        self,
        query_img: Tensor,
        support_imgs: Tensor,
        support_masks: Tensor,
        way_classes: Tensor | None = None,
    ) -> Tensor:
        """FS-CS: the final logits [B, N, 1, 2, h, w] of each way at the feature grid: each way is an
        NTRENet episode of its K shots (one :meth:`forward_outputs` on the B*N episodes, the query's
        backbone features computed once). ``way_classes`` is not needed (the forward is
        class-agnostic; only the contrastive memory bank of ``training_loss`` is keyed by class)."""
        out = self.forward_outputs(query_img, support_imgs, support_masks)["out"]
        return self._fscs_logits(out, support_masks)

    def forward_shots(self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor) -> Tensor:
        """Logits [B, 1, 2, H, W] (all K shots fused), upsampled to the query size."""
        out = self.forward_outputs(query_img, support_imgs, support_masks)["out"]
        return _upsample(out, query_img.shape[-2:]).unsqueeze(1)

    def training_loss(
        self, batch: dict[str, Any], criterion: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``main + aux_weight * (background + 0.4 inner + 0.6 initial + 0.01 contrast)`` (module docstring).

        ``criterion`` (the task's CE, ignore label 255) scores the final, inner and initial logits;
        the background and contrastive terms are NTRENet's own. Updates the contrastive memory bank.
        Returns the loss, the final logits [B, 2, H, W] and the terms (``main``, ``aux_inner``,
        ``aux_initial``, ``background``, ``contrast``).
        """
        supports, masks = _as_shots(batch["support_imgs"], batch["support_masks"])
        out = self.forward_outputs(batch["query_img"], supports, masks, supports_too=True)
        size, target = batch["query_img"].shape[-2:], batch["query_mask"]
        logits = _upsample(out["out"], size)
        main = criterion(logits, target)
        inner = torch.stack([criterion(_upsample(x, size), target) for x in out["inner"]]).mean()
        initial = torch.stack([criterion(_upsample(x, size), target) for x in out["initial"]]).mean()
        s_size = supports.shape[-2:]
        background = background_loss(_upsample(out["query_bg"], size), target)
        for k in range(masks.shape[1]):
            background = background + background_loss(_upsample(out["support_bg"][:, k], s_size), masks[:, k])
        background = background / (masks.shape[1] + 1)
        contrast = self.contrast(
            out["query_red"], out["support_red"], out["out"], target, masks, out["query_bg"],
            out["support_bg"], batch["class_id"],
        )  # fmt: skip
        aux = background + INNER_WEIGHT * inner + INITIAL_WEIGHT * initial + CONTRAST_WEIGHT * contrast
        terms = {
            "main": main, "aux_inner": inner, "aux_initial": initial, "background": background,
            "contrast": contrast,
        }  # fmt: skip
        return main + self.aux_weight * aux, logits, terms

    # -- reference checkpoints -----------------------------------------------------------------------
    def load_reference_state_dict(self, state_dict: dict[str, Tensor] | str | Path) -> None:
        """Load a checkpoint of the reference NTRENet (``train_epoch_*.pth`` / ``final.pth`` with ``state_dict``).

        Its names map to ours: ``layer0..4`` -> ``backbone.*`` (the dilated ResNet's ``layer0.<i>`` ->
        the stem's names; VGG-16-BN's are ours), ``inital_beta_conv`` / ``inital_inner_cls`` ->
        ``learner.initial_beta_conv`` / ``learner.initial_inner_cls``, the rest under ``learner.`` as
        they are. Checkpoints in our names load as they are.
        """
        if isinstance(state_dict, (str, Path)):
            state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
        if isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
        backbone_key = getattr(self.backbone, "reference_key", reference_backbone_key)
        ours = {
            reference_ntrenet_key(k.removeprefix("module."), backbone_key): v for k, v in state_dict.items()
        }
        super().load_reference_state_dict(ours)


def reference_ntrenet_key(key: str, backbone_key: Callable[[str], str] = reference_backbone_key) -> str:
    """A key of the reference NTRENet's state_dict -> ours (keys already in our names pass unchanged).

    ``backbone_key`` maps the backbone's ``layer0..4`` keys (see :func:`fss.models.bam.reference_bam_key`).
    """
    if re.match(r"layer[0-4]\.", key):
        return "backbone." + backbone_key(key)
    if key.startswith(("backbone.", "learner.")):
        return key
    return "learner." + re.sub(r"^inital_", "initial_", key)
