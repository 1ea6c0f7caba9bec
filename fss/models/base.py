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
    votes = shot_logits.argmax(dim=2).sum(dim=1)  # [B, H, W]
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
    #: on CPU, at inference on large inputs, run the learner on this many query/support pairs at a
    #: time (None: all at once); see ``_learner_logits``
    cpu_learner_chunk: ClassVar[int | None] = 1
    #: ... when the first query feature map has at least this many positions (40 x 40: ~320 px)
    cpu_chunk_min_positions: ClassVar[int] = 1600

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
        s_img = support_imgs.flatten(0, 1)
        s_mask = support_masks.flatten(0, 1).float()
        needs_plain, needs_masked = self.masking.needs_plain, self.masking.needs_masked_input
        with torch.no_grad():
            parts = [query_img]
            if needs_plain:
                parts.append(s_img)
            if needs_masked:
                parts.append(input_mask(s_img, s_mask))
            sizes = [p.shape[0] for p in parts]
            if all(p.shape[1:] == query_img.shape[1:] for p in parts):
                feats = self.backbone(torch.cat(parts) if len(parts) > 1 else query_img)
                split = [f.split(sizes) for f in feats]
            else:  # query and supports of different sizes: query alone, supports batched
                q = self.backbone(query_img)
                s = self.backbone(torch.cat(parts[1:]))
                split = [(qf, *sf.split(sizes[1:])) for qf, sf in zip(q, s)]
            query_feats = [parts_[0] for parts_ in split]
            plain = self.prepare_support_feats([p[1] for p in split]) if needs_plain else None
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
        query_feats, support_feats = self.extract_features(query_img, support_imgs, support_masks)
        if shots > 1:  # computed once, repeated for each shot's correlation
            query_feats = [f.repeat_interleave(shots, dim=0) for f in query_feats]
        logits = self._learner_logits(query_feats, support_feats, support_masks.flatten(0, 1).float())
        logits = F.interpolate(logits, query_img.shape[-2:], mode="bilinear", align_corners=True)
        return logits.view(batch, shots, *logits.shape[1:])

    def _learner_logits(
        self, query_feats: list[Tensor], support_feats: list[Tensor], masks: Tensor
    ) -> Tensor:
        """``predict_logits`` on all N pairs at once, or on CPU in chunks of ``cpu_learner_chunk`` pairs.

        The learners treat every pair on its own (GroupNorm / LayerNorm, no batch statistics), so
        chunking changes no value. On a CPU the correlations of many pairs at once spill out of the
        caches: at 400 px, 5 pairs one by one took 3.75 s against 4.49 s together (docs/performance.md).
        """
        n = masks.shape[0]
        chunk = self.cpu_learner_chunk
        small = query_feats[0].shape[-2:].numel() < self.cpu_chunk_min_positions
        # chunking pays off only for large correlations; on small inputs, and when training (where
        # the batch is the unit of work), one call is faster (96 px training step: 2x)
        if masks.device.type != "cpu" or not chunk or n <= chunk or small or torch.is_grad_enabled():
            return self.predict_logits(query_feats, support_feats, masks)
        return torch.cat(
            [
                self.predict_logits(
                    [f[i : i + chunk] for f in query_feats],
                    [f[i : i + chunk] for f in support_feats],
                    masks[i : i + chunk],
                )
                for i in range(0, n, chunk)
            ]
        )

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
