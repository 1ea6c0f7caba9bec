"""The shared skeleton of every few-shot segmenter: frozen backbone -> support masking -> learner.

A model subclasses :class:`FewShotSegmenter`, says how many backbone levels it reads
(``num_levels``), and implements one of two hooks:

* :meth:`FewShotSegmenter.predict_logits` (per-shot models: HSNet, ASNet, VAT): one query/support
  pair -> logits. The base class runs it for every shot, and the K per-shot logit maps are combined
  by the k-shot rule (the references' vote, or the mean);
* :meth:`FewShotSegmenter.fuse_shots` (models that combine their K supports themselves, e.g. by
  averaging prototypes, or with a learned module; ``fuses_shots = True``): all K supports of an
  episode -> one logit map.

Optionally :meth:`FewShotSegmenter.prepare_support_feats` transforms support features before
masking. Everything else lives here once: one batched backbone call for the query, the plain
supports and the input-masked supports (only the passes the masking strategy needs; the query's
features computed once for all K shots), the masking strategy (``fss.masking``), upsampling the
logits to the image size, k-shot aggregation, reference checkpoint import. The CPU inference path
that runs shots one at a time lives in ``fss.speed``.

Shapes: B episodes, K shots, H x W image size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fss.backbones import FeatureBackbone, build_backbone
from fss.describe import RecordsInitArgs
from fss.masking import SupportMasking, build_masking, input_mask
from fss.speed import PER_SHOT_MIN_PIXELS, per_shot_logits, runs_per_shot

KShotRule = Literal["vote", "mean"]


def _as_shots(support_imgs: Tensor, support_masks: Tensor) -> tuple[Tensor, Tensor]:
    """Accept [B,3,H,W]/[B,H,W] (one shot) or [B,K,3,H,W]/[B,K,H,W]; return the 5D/4D forms."""
    if support_imgs.dim() == 4:
        support_imgs = support_imgs.unsqueeze(1)
    if support_masks.dim() == 3:
        support_masks = support_masks.unsqueeze(1)
    if support_imgs.dim() != 5 or support_masks.dim() != 4:
        raise ValueError(
            "support_imgs must be [B,K,3,H,W] and support_masks [B,K,H,W], got "
            f"{tuple(support_imgs.shape)} and {tuple(support_masks.shape)}"
        )
    if (
        support_imgs.shape[:2] != support_masks.shape[:2]
        or support_imgs.shape[-2:] != support_masks.shape[-2:]
    ):
        raise ValueError(
            f"support images {tuple(support_imgs.shape)} and masks {tuple(support_masks.shape)} disagree"
        )
    return support_imgs, support_masks


def vote_masks(shot_logits: Tensor) -> Tensor:
    """The reference k-shot rule: per-shot argmax votes / max(largest vote, 1), thresholded at 0.5.

    Args:
        shot_logits: [B, K, 2, H, W].

    Returns:
        [B, H, W] long masks in {0, 1}.
    """
    # argmax over the 2 classes (ties -> background, as argmax), without argmax's slow reduction
    votes = (shot_logits[:, :, 1] > shot_logits[:, :, 0]).sum(dim=1)  # [B, H, W]
    if shot_logits.shape[1] == 1:
        return votes
    max_vote = votes.flatten(1).max(dim=1).values.clamp(min=1).view(-1, 1, 1)
    return (votes.float() / max_vote >= 0.5).long()


class FewShotSegmenter(RecordsInitArgs, nn.Module):
    """Base class of the few-shot segmentation networks.

    Args:
        backbone: a :class:`~fss.backbones.FeatureBackbone`, or a name of ``fss.backbones.BACKBONES``
            (``resnet50``, ``dinov2_vits14``, ...) built with ``weights``.
        masking: a :class:`~fss.masking.SupportMasking`, or a name of ``fss.masking.MASKINGS``.
        weights: for a backbone given by name only: ``pretrained`` (its standard weights: ImageNet
            for the ResNets, timm's for the ViTs), a weights file, or None (random). A backbone
            object carries its own weights.
    """

    #: the attribute (and reference checkpoint prefix) of the trainable part
    learner_name: ClassVar[str] = "learner"
    #: other prefixes under which reference checkpoints store the learner (e.g. the iFSL FS-CS HSNet's
    #: ``learner.``); ``load_reference_state_dict`` reads them as ``learner_name``
    learner_aliases: ClassVar[tuple[str, ...]] = ()
    #: how many backbone levels the model reads: the deepest ``num_levels`` (HSNet, ASNet: 3; VAT: 4)
    num_levels: ClassVar[int] = 3
    #: True: the model implements ``fuse_shots`` and returns one logit map per episode
    fuses_shots: ClassVar[bool] = False
    #: constructor arguments that only initialise weights (a file to read): left out of the
    #: description a checkpoint records (the checkpoint holds those weights), so that rebuilding
    #: the model from it never needs the file, and a config may name another copy
    init_only_args: ClassVar[tuple[str, ...]] = ()
    #: on CPU, at inference, a per-shot model processes its shots one at a time
    #: (``fss.speed.per_shot_logits``) from this many query pixels on; None: never
    cpu_per_shot_min_pixels: ClassVar[int | None] = PER_SHOT_MIN_PIXELS

    def __init__(
        self,
        backbone: FeatureBackbone | str = "resnet50",
        masking: SupportMasking | str = "hm",
        weights: str | None = "pretrained",
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            backbone = (
                build_backbone(backbone)
                if weights == "pretrained"
                else build_backbone(backbone, weights=weights)
            )
        self.backbone = backbone
        #: the backbone levels the model reads, shallowest first
        self.levels: tuple[int, ...] = backbone.select_levels(self.num_levels, needed_by=type(self).__name__)
        self.masking = build_masking(masking)

    # -- the hooks a model implements -------------------------------------------------------
    def prepare_support_feats(self, feats: list[Tensor]) -> list[Tensor]:
        """Transform support features [N,C,h,w] before masking (identity unless a model needs it)."""
        return feats

    def predict_logits(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_mask: Tensor
    ) -> Tensor:
        """Per-shot learner: features of N query/support pairs -> logits [N, 2, h, w] at any h, w.

        ``support_feats`` are already masked; ``support_mask`` [N, H, W] is there for models that
        use the mask again (ASNet's attention). The N pairs must be treated independently (no batch
        statistics): on CPU the shots may come one at a time (``fss.speed``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} implements neither predict_logits (per shot) nor fuse_shots"
        )

    def fuse_shots(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_masks: Tensor
    ) -> Tensor:
        """The shot-fusion hook: an episode's features -> logits [B, S, 2, h, w] before the k-shot rule.

        Args:
            query_feats: per level [B, C, h, w] (each query once).
            support_feats: per level [B*K, C, h', w'], masked, shot-minor (episode b's shots are rows
                b*K .. b*K + K-1).
            support_masks: [B, K, H', W'] float.

        Returns:
            [B, S, 2, h, w]: S = K per-shot maps (this default: ``predict_logits`` for every pair,
            the query's features repeated, not recomputed), or S = 1 for a model that combines its
            K supports itself (set ``fuses_shots = True`` and override this).
        """
        batch, shots = support_masks.shape[:2]
        if shots > 1:  # computed once, repeated for each shot's pair
            query_feats = [f.repeat_interleave(shots, dim=0) for f in query_feats]
        logits = self.predict_logits(query_feats, support_feats, support_masks.flatten(0, 1))
        return logits.unflatten(0, (batch, shots))

    def way_logits(
        self,
        query_img: Tensor,
        support_imgs: Tensor,
        support_masks: Tensor,
        way_classes: Tensor | None = None,
    ) -> Tensor:
        """FS-CS: logits of the query against each of the N ways of an episode, at the learner's resolution.

        Each way is an FS-S episode of its K shots; the ways must not interact (a way's logits are
        those of the way run alone). This default serves every model built on the hooks above: one
        backbone call for the query (once, whatever N and K) and all N x K supports
        (:meth:`masked_features`), the query's features repeated per way, then :meth:`fuse_shots`
        on the B x N episodes. A model that computes from the images itself (BAM, NTRENet)
        overrides it. ``fss.models.ifsl.episode_way_logits`` checks the shapes and calls it.

        Args:
            query_img: [B, 3, H, W].
            support_imgs: [B, N, K, 3, H', W'].
            support_masks: [B, N, K, H', W'] float (0/1, or way-index values).
            way_classes: [B, N] global class id of each way, given in training only (as the
                episode's ``class_id`` is to :meth:`training_loss`); a model whose training uses the
                episode's class (BAM's ensemble leaves it out of the base learner's map) reads it.

        Returns:
            [B, N, S, 2, h, w]: S = K per-shot maps, or 1 for a model that fuses its shots.
        """
        batch, way = support_masks.shape[:2]
        query_feats, support_feats = self.masked_features(
            query_img, support_imgs.flatten(0, 2), support_masks.flatten(0, 2)
        )
        query_feats = [f.repeat_interleave(way, dim=0) for f in query_feats] if way > 1 else query_feats
        logits = self.fuse_shots(query_feats, support_feats, support_masks.flatten(0, 1))  # [B*N, S, 2, h, w]
        return logits.unflatten(0, (batch, way))

    def set_train_classes(self, class_ids: list[int]) -> None:
        """Called by the task before fitting with the data's training classes (global ids); a model
        whose parts depend on them (BAM's base learner) records or checks them. Default: nothing."""

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of everything the optimizer trains: the learner's parameters that
        require gradients (names relative to the learner). A model that also fine-tunes its backbone
        (PSPNet, BAM's stage 1) adds those."""
        return [(n, p) for n, p in self.learner.named_parameters() if p.requires_grad]

    def training_loss(
        self, batch: dict[str, Any], criterion: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The training loss of an episode batch: ``(loss, logits [B, 2, H, W], named terms)``.

        Default: ``criterion(self(query, supports, masks), query_mask)`` and no extra terms. A model
        whose reference trains with more terms (BAM's auxiliary meta-learner loss) or needs more of
        the batch (the episode's ``class_id``) overrides it; the task logs each term as
        ``train/loss_<name>``.
        """
        logits = self(batch["query_img"], batch["support_imgs"], batch["support_masks"])
        return criterion(logits, batch["query_mask"]), logits, {}

    # -- shared machinery ------------------------------------------------------------------
    @property
    def learner(self) -> nn.Module:
        """The trainable part (everything but the frozen backbone)."""
        return self._modules[self.learner_name]

    def extract_features(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone features of the query [B,C,h,w] and masked supports [B*K,C,h,w], per level.

        One backbone call serves the query, the plain supports and, when the strategy needs
        them, the input-masked supports (they are concatenated along the batch dimension).
        Runs without autograd: the backbone is frozen.
        """
        support_imgs, support_masks = _as_shots(support_imgs, support_masks)
        query_feats, support_feats = self.masked_features(
            query_img, support_imgs.flatten(0, 1), support_masks.flatten(0, 1).float()
        )
        return query_feats, support_feats

    def masked_features(
        self, query_img: Tensor | None, s_img: Tensor, s_mask: Tensor
    ) -> tuple[list[Tensor] | None, list[Tensor]]:
        """Query features (None without a query) and masked support features of [N,3,H,W] / [N,H,W]."""
        needs_plain, needs_masked = self.masking.needs_plain, self.masking.needs_masked_input
        with torch.no_grad():
            parts = [] if query_img is None else [query_img]
            if needs_plain:
                parts.append(s_img)
            if needs_masked:
                parts.append(input_mask(s_img, s_mask))
            sizes = [p.shape[0] for p in parts]
            if all(p.shape[1:] == parts[0].shape[1:] for p in parts):
                feats = self.backbone(torch.cat(parts) if len(parts) > 1 else parts[0])
                split = [f.split(sizes) for f in feats]
            else:  # query and supports of different sizes: query alone, supports batched
                q = self.backbone(query_img)
                s = self.backbone(torch.cat(parts[1:]))
                split = [(qf, *sf.split(sizes[1:])) for qf, sf in zip(q, s)]
            query_feats = None if query_img is None else [parts_[0] for parts_ in split]
            i_plain = -2 if needs_masked else -1
            plain = self.prepare_support_feats([p[i_plain] for p in split]) if needs_plain else None
            masked = self.prepare_support_feats([p[-1] for p in split]) if needs_masked else None
            support_feats = self.masking(plain, masked, s_mask)
        return query_feats, support_feats

    def forward_shots(self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor) -> Tensor:
        """Logits [B, S, 2, H, W] at the query image size, before the k-shot rule.

        S = K (one map per shot) for a per-shot model, S = 1 for a model that fuses its shots.

        Args:
            query_img: [B, 3, H, W] normalised query images.
            support_imgs: [B, K, 3, H', W'] (or [B, 3, H', W'] for one shot).
            support_masks: [B, K, H', W'] (or [B, H', W']) binary masks.
        """
        support_imgs, support_masks = _as_shots(support_imgs, support_masks)
        masks = support_masks.float()
        if runs_per_shot(self, query_img):
            logits = per_shot_logits(self, query_img, support_imgs, masks)
        else:
            query_feats, support_feats = self.masked_features(
                query_img, support_imgs.flatten(0, 1), masks.flatten(0, 1)
            )
            logits = self.fuse_shots(query_feats, support_feats, masks)
        batch, maps = logits.shape[:2]
        logits = F.interpolate(
            logits.flatten(0, 1), query_img.shape[-2:], mode="bilinear", align_corners=True
        )
        return logits.view(batch, maps, *logits.shape[1:])

    def forward(self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor) -> Tensor:
        """Logits [B, 2, H, W]: the mean of the per-shot logits, or the fused logits."""
        return self.forward_shots(query_img, support_imgs, support_masks).mean(dim=1)

    @torch.inference_mode()
    def predict_mask(
        self,
        query_img: Tensor,
        support_imgs: Tensor,
        support_masks: Tensor,
        rule: KShotRule = "vote",
        out_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Binary prediction [B, H, W] (long) for any K.

        Args:
            rule: ``"vote"`` (reference: per-shot argmax votes normalised by the largest vote,
                thresholded at 0.5) or ``"mean"`` (argmax of the mean logits). A model that fuses
                its shots has one map: both rules are its argmax.
            out_size: predict at this size instead of the query's (the references'
                ``use_original_imgsize``): logits are resized bilinearly before the argmax.
        """
        logits = self.forward_shots(query_img, support_imgs, support_masks)
        return aggregate_shots(logits, rule, out_size)

    # -- checkpoints -----------------------------------------------------------------------
    def load_reference_state_dict(self, state_dict: dict[str, Tensor] | str | Path) -> None:
        """Load weights saved by the reference code (or a published checkpoint file).

        Accepts a dict or a path (a plain ``state_dict`` or a Lightning checkpoint with one); keys
        ``backbone.*`` (torchvision names) and ``<learner_name>.*`` (or a ``learner_aliases`` prefix),
        optionally prefixed ``module.`` (DataParallel). Backbone keys may
        be absent (published checkpoints always have them); ``backbone.fc.*`` is ignored;
        float16 tensors are cast to float32. Any other missing or unexpected key is an error.
        """
        if isinstance(state_dict, (str, Path)):
            state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
        if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
            state_dict = state_dict["state_dict"]
        sd = {}
        for key, value in state_dict.items():
            key = key.removeprefix("module.")
            for alias in self.learner_aliases:
                if key.startswith(alias + "."):
                    key = self.learner_name + key[len(alias) :]
            if key.startswith("backbone.fc."):
                continue
            sd[key] = value.float() if value.is_floating_point() else value
        missing, unexpected = self.load_state_dict(sd, strict=False)
        has_backbone = any(k.startswith("backbone.") for k in sd)
        missing = [k for k in missing if has_backbone or not k.startswith("backbone.")]
        if missing or unexpected:
            raise KeyError(
                f"checkpoint does not match {type(self).__name__}({self.backbone.name}): "
                f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )


def aggregate_shots(
    shot_logits: Tensor, rule: KShotRule = "vote", out_size: tuple[int, int] | None = None
) -> Tensor:
    """Logits [B, S, 2, H, W] of ``forward_shots`` -> masks [B, H', W'] by ``rule`` (see ``predict_mask``)."""
    if out_size is not None and tuple(out_size) != tuple(shot_logits.shape[-2:]):
        b, k = shot_logits.shape[:2]
        shot_logits = F.interpolate(
            shot_logits.flatten(0, 1), tuple(out_size), mode="bilinear", align_corners=True
        ).view(b, k, 2, *out_size)
    if rule == "vote":
        return vote_masks(shot_logits)
    if rule == "mean":
        return shot_logits.mean(dim=1).argmax(dim=1)
    raise ValueError(f"unknown k-shot rule {rule!r}: choose 'vote' or 'mean'")
