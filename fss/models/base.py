"""The shared skeleton of every few-shot segmenter: frozen backbone -> support masking -> learner.

A model (HSNet, ASNet, VAT) subclasses :class:`FewShotSegmenter` and implements only
:meth:`FewShotSegmenter.predict_logits` (and, where the reference prepares support features
differently, :meth:`FewShotSegmenter.prepare_support_feats`). Everything else lives here once:

* one batched backbone call for the query, the plain supports and the input-masked supports
  (only the passes the masking strategy needs); the query's features are computed once for
  all K shots;
* the masking strategy (``fss.masking``);
* upsampling the logits to the image size, k-shot aggregation, reference checkpoint import.

Shapes: B episodes, K shots, H x W image size.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fss.masking import SupportMasking, build_masking, input_mask
from fss.models.backbone import Backbone

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


class FewShotSegmenter(nn.Module):
    """Base class of the few-shot segmentation networks.

    Args:
        backbone: ``resnet50``, ``resnet101`` (or ``resnet18``/``resnet34`` for small CPU runs).
        masking: support masking strategy, one of ``fm | im | hm | hm_add | hm_reverse``.
        weights: backbone weights: ``"imagenet"``, a torchvision state_dict path, or ``None``.
    """

    #: the attribute (and reference checkpoint prefix) of the trainable part
    learner_name: ClassVar[str] = "learner"
    #: first ResNet stage whose blocks the model correlates (conv3_x = 2)
    first_layer: ClassVar[int] = 2
    #: per-model meaning of a masking name, e.g. ASNet's "fm" is its reference's attention-only masking
    masking_overrides: ClassVar[dict[str, type[SupportMasking]]] = {}
    #: on CPU, at inference, shots are processed one at a time (``forward_shots``) from this many
    #: query pixels on (320 x 320); None: never
    cpu_per_shot_min_pixels: ClassVar[int | None] = 320 * 320

    def __init__(
        self,
        backbone: str = "resnet50",
        masking: str | SupportMasking = "hm",
        weights: str | None = "imagenet",
    ) -> None:
        super().__init__()
        self.backbone = Backbone(backbone, weights=weights, first_layer=self.first_layer)
        self.masking = build_masking(masking)
        if self.masking.name in self.masking_overrides and not isinstance(masking, SupportMasking):
            self.masking = self.masking_overrides[self.masking.name]()

    # -- the hooks a model implements -------------------------------------------------------
    def prepare_support_feats(self, feats: list[Tensor]) -> list[Tensor]:
        """Transform support features [N,C,h,w] before masking (identity unless a model needs it)."""
        return feats

    def predict_logits(
        self, query_feats: list[Tensor], support_feats: list[Tensor], support_mask: Tensor
    ) -> Tensor:
        """Learner: query/support features of N = B*K pairs -> logits [N, 2, h, w] at any h, w.

        ``support_feats`` are already masked; ``support_mask`` [N, H, W] is there for models that
        use the mask again (ASNet's attention).
        """
        raise NotImplementedError

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
        query_feats, support_feats = self._features(
            query_img, support_imgs.flatten(0, 1), support_masks.flatten(0, 1).float()
        )
        return query_feats, support_feats

    def _features(
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
        """Per-shot logits [B, K, 2, H, W] at the query image size.

        Args:
            query_img: [B, 3, H, W] normalised query images.
            support_imgs: [B, K, 3, H', W'] (or [B, 3, H', W'] for one shot).
            support_masks: [B, K, H', W'] (or [B, H', W']) binary masks.
        """
        support_imgs, support_masks = _as_shots(support_imgs, support_masks)
        batch, shots = support_imgs.shape[:2]
        masks = support_masks.float()
        if self._per_shot(query_img):
            logits = self._per_shot_logits(query_img, support_imgs, masks)
        else:
            query_feats, support_feats = self._features(
                query_img, support_imgs.flatten(0, 1), masks.flatten(0, 1)
            )
            if shots > 1:  # computed once, repeated for each shot's correlation
                query_feats = [f.repeat_interleave(shots, dim=0) for f in query_feats]
            logits = self.predict_logits(query_feats, support_feats, masks.flatten(0, 1))
        logits = F.interpolate(logits, query_img.shape[-2:], mode="bilinear", align_corners=True)
        return logits.view(batch, shots, *logits.shape[1:])

    def _per_shot(self, query_img: Tensor) -> bool:
        """Whether ``forward_shots`` takes the CPU inference path of ``_per_shot_logits``."""
        limit = self.cpu_per_shot_min_pixels
        return (
            query_img.device.type == "cpu"
            and not torch.is_grad_enabled()
            and limit is not None
            and query_img.shape[-2:].numel() >= limit
        )

    def _per_shot_logits(self, query_img: Tensor, support_imgs: Tensor, masks: Tensor) -> Tensor:
        """Logits [B*K, 2, h, w] (shot-minor, as the batched path), one shot at a time.

        The query's features are still computed once (with the first shot, in one backbone call).
        On a CPU, a backbone call of 3 images and a learner call of one pair keep their activations
        in the caches: at 400 px, ResNet-50, 11 images in one backbone call took 3.5 s against
        3.05 s in calls of at most 3, and 5 learner pairs in one call 4.5 s against 3.75 s one by
        one (docs/performance.md). Every model's learner treats each pair on its own (GroupNorm /
        LayerNorm, no batch statistics), so the values are those of the batched path.
        """
        query_feats, support_feats = self._features(query_img, support_imgs[:, 0], masks[:, 0])
        logits = [self.predict_logits(query_feats, support_feats, masks[:, 0])]
        for k in range(1, support_imgs.shape[1]):
            _, support_feats = self._features(None, support_imgs[:, k], masks[:, k])
            logits.append(self.predict_logits(query_feats, support_feats, masks[:, k]))
        return torch.stack(logits, dim=1).flatten(0, 1)

    def forward(self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor) -> Tensor:
        """Logits [B, 2, H, W]; with K > 1 shots, the mean of the per-shot logits."""
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
                thresholded at 0.5) or ``"mean"`` (argmax of the mean logits).
            out_size: predict at this size instead of the query's (the references'
                ``use_original_imgsize``): logits are resized bilinearly before the argmax.
        """
        logits = self.forward_shots(query_img, support_imgs, support_masks)
        return aggregate_shots(logits, rule, out_size)

    # -- checkpoints -----------------------------------------------------------------------
    def load_reference_state_dict(self, state_dict: dict[str, Tensor] | str | Path) -> None:
        """Load weights saved by the reference code (or a published checkpoint file).

        Accepts a dict or a path; keys ``backbone.*`` (torchvision names) and
        ``<learner_name>.*``, optionally prefixed ``module.`` (DataParallel). Backbone keys may
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
    """Per-shot logits [B, K, 2, H, W] -> masks [B, H', W'] by ``rule`` (see ``predict_mask``)."""
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
