"""Frozen feature extractors (:class:`FeatureBackbone`) and the registry of their short names.

``BACKBONES`` maps a short name (``model.backbone: resnet50`` in a config, ``--model.backbone
dinov2_vits14`` on the command line) to a class and its arguments: the architecture with its
standard pretrained weights. Any other choice (random weights, a local file, ViT levels) is the
object form, ``class_path: fss.backbones.ResNet`` / ``fss.backbones.TimmBackbone`` with
``init_args``. A new backbone is one :class:`FeatureBackbone` subclass plus, optionally, a line here.
"""

from __future__ import annotations

from typing import Any

from fss.backbones.base import BackboneWeightsError, FeatureBackbone, FeatureInfo, StagedBackbone
from fss.backbones.dilated_resnet import DilatedResNet
from fss.backbones.resnet import ResNet
from fss.backbones.timm_backbone import TimmBackbone
from fss.backbones.vgg import VGG16BN

#: short name -> (class, constructor arguments)
BACKBONES: dict[str, tuple[type[FeatureBackbone], dict[str, Any]]] = {
    "resnet18": (ResNet, {"name": "resnet18"}),
    "resnet34": (ResNet, {"name": "resnet34"}),
    "resnet50": (ResNet, {"name": "resnet50"}),
    "resnet101": (ResNet, {"name": "resnet101"}),
    "dilated_resnet50": (DilatedResNet, {"name": "resnet50"}),
    "dilated_resnet101": (DilatedResNet, {"name": "resnet101"}),
    "vgg16_bn": (VGG16BN, {}),
    "dinov2_vits14": (TimmBackbone, {"name": "vit_small_patch14_dinov2.lvd142m"}),
    "dinov2_vitb14": (TimmBackbone, {"name": "vit_base_patch14_dinov2.lvd142m"}),
}

__all__ = [
    "BACKBONES",
    "BackboneWeightsError",
    "DilatedResNet",
    "FeatureBackbone",
    "FeatureInfo",
    "ResNet",
    "StagedBackbone",
    "TimmBackbone",
    "VGG16BN",
    "backbone_spec",
    "build_backbone",
]


def backbone_spec(name: str) -> tuple[type[FeatureBackbone], dict[str, Any]]:
    """The class and arguments registered as ``name``; a ValueError listing the names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)} (option model.backbone), "
            "or give a class_path (fss.backbones.ResNet, fss.backbones.TimmBackbone) with init_args"
        ) from None


def build_backbone(backbone: str | FeatureBackbone, **overrides: Any) -> FeatureBackbone:
    """``backbone`` itself if it is one, else the registered backbone of that name (arguments overridden)."""
    if isinstance(backbone, FeatureBackbone):
        return backbone
    cls, kwargs = backbone_spec(backbone)
    return cls(**(kwargs | overrides))
