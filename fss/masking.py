"""Support masking strategies: how the support mask is applied to the support features.

Every strategy maps the backbone features of the support images to *masked* support features
that the model compares with the query. Given, for one feature level,

* ``feats``  [N, C, h, w]: features of the plain support images,
* ``masked`` [N, C, h, w]: features of the support images multiplied by their mask in the
  normalised image space (input masking needs a second backbone pass, which the model runs in
  the same batched call as the plain pass),
* ``mask``   [N, H, W]: the binary support masks (float, 0/1),

a strategy returns one masked map per level. Its class attributes tell the model which backbone
passes it needs. Each strategy's definition is in its class docstring (Moon et al., "HM: Hybrid
Masking for Few-Shot Segmentation", ECCV 2022); a name means the same operation in every model.
``MASKINGS`` is the registry of names (``model.masking: hm``); docs, errors and tests list it.

A new strategy is one subclass of :class:`SupportMasking` plus one line in ``MASKINGS``.
See ``docs/masking.md`` for the reasoning and the reference code paths.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fss.describe import RecordsInitArgs


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize binary masks [N, H, W] to [N, 1, h, w] bilinearly with ``align_corners=True``."""
    return F.interpolate(mask.unsqueeze(1).float(), size, mode="bilinear", align_corners=True)


def feature_masking(feats: list[Tensor], mask: Tensor) -> list[Tensor]:
    """FM: every feature map [N, C, h, w] times the mask [N, H, W] resized to h x w."""
    return [f * resize_mask(mask, f.shape[-2:]) for f in feats]


def input_mask(images: Tensor, mask: Tensor) -> Tensor:
    """The support images [N, 3, H, W] times their masks [N, H, W] (the input of IM)."""
    return images * mask.unsqueeze(1).to(images.dtype)


class SupportMasking(RecordsInitArgs, ABC):
    """Base class: combine plain and input-masked support features into masked features.

    Class attributes tell the model which backbone passes are needed, so that it runs exactly
    those (in one batched call). A strategy with ``needs_masked_input`` False is a function of the
    plain features and the mask only, so it can be applied at any feature resolution (VAT applies
    such strategies after resizing the features, as the original VAT does for FM).
    """

    name: ClassVar[str]
    #: the features of the plain support images are used
    needs_plain: ClassVar[bool] = True
    #: the features of the input-masked support images are used (a second backbone pass)
    needs_masked_input: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, feats: list[Tensor] | None, masked: list[Tensor] | None, mask: Tensor) -> list[Tensor]:
        """Return one masked support feature map [N, C, h, w] per level."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FeatureMasking(SupportMasking):
    """FM: features x mask resized bilinearly (``align_corners=True``) to the feature size.

    The support masking of the original HSNet and VAT.
    """

    name = "fm"

    def __call__(self, feats, masked, mask):
        return feature_masking(feats, mask)


class InputMasking(SupportMasking):
    """IM: the features of the support image multiplied by its mask (background = ImageNet mean colour)."""

    name = "im"
    needs_plain = False
    needs_masked_input = True

    def __call__(self, feats, masked, mask):
        return list(masked)


class HybridMasking(SupportMasking):
    """HM: FM where FM > 0, else IM (per element)."""

    name = "hm"
    needs_masked_input = True

    def __call__(self, feats, masked, mask):
        return [torch.where(fm > 0, fm, im) for fm, im in zip(feature_masking(feats, mask), masked)]


class HybridMaskingAdd(SupportMasking):
    """Ablation: FM + IM."""

    name = "hm_add"
    needs_masked_input = True

    def __call__(self, feats, masked, mask):
        return [fm + im for fm, im in zip(feature_masking(feats, mask), masked)]


class HybridMaskingReverse(SupportMasking):
    """Ablation: IM where IM > 0, else FM."""

    name = "hm_reverse"
    needs_masked_input = True

    def __call__(self, feats, masked, mask):
        return [torch.where(im > 0, im, fm) for fm, im in zip(feature_masking(feats, mask), masked)]


class NoMasking(SupportMasking):
    """The support features as they are: the mask reaches the model only where the model uses it itself.

    The reference ASNet (its published numbers, the HM paper's ASNet "FM" row): its support
    features are never multiplied by the mask; its attention keys outside the mask are dropped.
    For models that do not use the mask themselves (HSNet, VAT) it is the "no masking" ablation.
    """

    name = "none"

    def __call__(self, feats, masked, mask):
        return list(feats)


MASKINGS: dict[str, type[SupportMasking]] = {
    cls.name: cls
    for cls in (
        FeatureMasking,
        InputMasking,
        HybridMasking,
        HybridMaskingAdd,
        HybridMaskingReverse,
        NoMasking,
    )
}


def build_masking(name: str | SupportMasking) -> SupportMasking:
    """Return the strategy called ``name`` (one of ``MASKINGS``), or ``name`` if it already is one."""
    if isinstance(name, SupportMasking):
        return name
    try:
        return MASKINGS[name]()
    except KeyError:
        raise ValueError(
            f"unknown masking {name!r}: choose one of {', '.join(MASKINGS)} (option model.masking)"
        ) from None
