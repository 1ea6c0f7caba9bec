"""Any timm model as a frozen :class:`~fss.backbones.base.FeatureBackbone`, ViTs (DINOv2) included.

The maps come from timm's ``forward_intermediates`` (raw outputs of the chosen blocks / stages, as
[N, C, h, w]; no final norm); ``feature_info`` is built from timm's own ``feature_info``.

Layers and levels (``levels``): each level is a list of indices into the timm model's
``feature_info`` (ViT: blocks 0..depth-1; CNN: its stages, e.g. ``act1, layer1 .. layer4`` for a
ResNet), shallowest level first. Defaults:

* single-stride models (ViTs: every block at the patch stride): the blocks split evenly into 4
  consecutive levels; ViT-S/14 and ViT-B/14 (12 blocks): ``[[0,1,2],[3,4,5],[6,7,8],[9,10,11]]``.
  A model takes the deepest levels it needs: HSNet and ASNet the last 9 blocks, VAT all 12;
* multi-stride models (CNNs): one level per stage from stride 4 on, one map each.

Pyramid (``pyramid_scales``): pyramid models (HSNet, ASNet, VAT) expect each deeper level at half
the resolution of the one before (their support-dimension strides and query-dimension mixing are
built for a ResNet's 8/16/32 strides). A ViT's levels all have the patch stride p, so each level is
resampled bilinearly by a fixed factor, the parameter-free form of ViTDet's simple feature pyramid
(Li et al., ECCV 2022): by default ..., 4, 2, 1, 0.5 from the shallowest to the deepest level, i.e.
strides ..., p/4, p/2, p, 2p (7, 14, 28 px for the last three levels of a 14 px-patch ViT, like a
ResNet's 8, 16, 32). Multi-stride models keep their maps as they are (scales 1).

Input: fss's images are ImageNet-normalised; a model pretrained with another normalisation
(``pretrained_cfg`` mean/std) gets the images renormalised by a fixed affine map, so a masked pixel
(0, the ImageNet mean colour) stays the mean colour. ViTs are built with ``dynamic_img_size`` and
``dynamic_img_pad``: any image size works (position embeddings interpolated, the image padded to a
multiple of the patch size, so the token grid is ceil(H / p) x ceil(W / p)).

Weights: ``pretrained`` (timm's default pretrained tag of ``name``, e.g. ``lvd142m`` for DINOv2,
downloaded from the Hugging Face hub or its URL), a local file (a timm or original checkpoint of
that model, converted by timm's own filter), or null for random.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fss.backbones.base import BackboneWeightsError, FeatureBackbone, FeatureInfo

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: levels of a single-stride model when ``levels`` is not given
DEFAULT_VIT_LEVELS = 4
#: model kwargs that let a ViT take any image size (ignored by models that do not accept them)
DYNAMIC_SIZE_KWARGS = {"dynamic_img_size": True, "dynamic_img_pad": True}


def _create(name: str, pretrained: bool, overlay: dict[str, Any] | None, kwargs: dict[str, Any]):
    """``timm.create_model`` without classifier, with ``DYNAMIC_SIZE_KWARGS`` where the model takes them."""
    import timm

    args = dict(pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay, **kwargs)
    try:
        return timm.create_model(name, **DYNAMIC_SIZE_KWARGS, **args)
    except TypeError as err:  # not a ViT: its constructor does not know these keywords
        if not any(key in str(err) for key in DYNAMIC_SIZE_KWARGS):
            raise
        return timm.create_model(name, **args)


class TimmBackbone(FeatureBackbone):
    """A frozen timm model whose chosen blocks / stages are the feature maps (see the module docstring).

    Args:
        name: a timm model name, optionally with a pretrained tag
            (``vit_small_patch14_dinov2.lvd142m``, ``vit_base_patch14_dinov2``, ``convnext_tiny``).
        weights: ``pretrained`` (timm's pretrained weights of ``name``), a local checkpoint file of
            that model, or null for random weights.
        levels: the feature maps, level by level (shallowest first), as indices into the timm
            model's ``feature_info``; null: the defaults of the module docstring.
        pyramid_scales: per level, the factor its maps are resampled by (bilinear); null: ...,
            4, 2, 1, 0.5 for a single-stride model (ViT), all 1 otherwise.
        model_kwargs: extra keyword arguments of ``timm.create_model`` (e.g. ``{depth: 4}`` for a
            small random ViT in tests).
    """

    def __init__(
        self,
        name: str = "vit_small_patch14_dinov2.lvd142m",
        weights: str | None = "pretrained",
        levels: list[list[int]] | None = None,
        pyramid_scales: list[float] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = self._build(name, weights, dict(model_kwargs or {}))
        info = self.model.feature_info
        timm_info = [(i["num_chs"], i["reduction"], i["module"]) for i in info]  # feature_info or FeatureInfo
        single_stride = len({r for _, r, _ in timm_info}) == 1
        if levels is None:
            levels = self._default_levels(timm_info, single_stride)
        self._check_levels(levels, len(timm_info))
        if pyramid_scales is None:
            n = len(levels)
            pyramid_scales = [2.0 ** (n - 2 - i) for i in range(n)] if single_stride else [1.0] * n
        if len(pyramid_scales) != len(levels) or any(s <= 0 for s in pyramid_scales):
            raise ValueError(
                f"TimmBackbone({name}): pyramid_scales needs one positive factor per level "
                f"({len(levels)} levels), got {pyramid_scales}"
            )
        self._indices = [i for level in levels for i in level]  # forward_intermediates order
        self._map_scale = [float(s) for level, s in zip(levels, pyramid_scales) for _ in level]
        described = []
        for level_id, (level, scale) in enumerate(zip(levels, pyramid_scales), start=1):
            strides = {timm_info[i][1] / scale for i in level}
            if len(strides) != 1:
                raise ValueError(
                    f"TimmBackbone({name}): level {level_id} mixes strides {sorted(strides)}; a level's "
                    "maps must share their shape (option levels)"
                )
            for i in level:
                channels, reduction, module = timm_info[i]
                described.append(FeatureInfo(channels, reduction / scale, level_id, module))
        if [d.level for d in described] != sorted(d.level for d in described):
            raise AssertionError("levels are listed shallowest first")
        self._describe(described)
        if hasattr(self.model, "prune_intermediate_layers"):  # drop the blocks after the last one used
            self.model.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self._renormalise = (mean, std) != (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)
        self._freeze()

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def _build(name: str, weights: str | None, kwargs: dict[str, Any]):
        if weights is None or weights == "none":
            return _create(name, False, None, kwargs)
        if weights == "pretrained":
            try:
                return _create(name, True, None, kwargs)
            except Exception as err:  # no network, no hub access, unknown tag ...
                raise BackboneWeightsError(
                    f"could not obtain timm's pretrained weights for {name} ({type(err).__name__}: {err}). "
                    f"{_where_to_download(name)} on a machine with internet and pass the file with "
                    "--model.backbone.weights /path/to/file, or use --model.backbone.weights null for "
                    "random weights."
                ) from err
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"backbone weights file not found: {path}. Pass an existing checkpoint of {name} with "
                "--model.backbone.weights PATH, 'pretrained' for timm's weights, or null for random."
            )
        try:
            return _create(name, True, {"file": str(path)}, kwargs)
        except (RuntimeError, KeyError) as err:
            raise BackboneWeightsError(f"the weights in {path} do not fit timm's {name}: {err}") from err

    @staticmethod
    def _default_levels(timm_info: list[tuple[int, int, str]], single_stride: bool) -> list[list[int]]:
        if single_stride:
            n, count = len(timm_info), DEFAULT_VIT_LEVELS
            if n < count:
                return [[i] for i in range(n)]
            bounds = [round(k * n / count) for k in range(count + 1)]
            return [list(range(bounds[k], bounds[k + 1])) for k in range(count)]
        return [[i] for i, (_, reduction, _) in enumerate(timm_info) if reduction >= 4]

    def _check_levels(self, levels: list[list[int]], n: int) -> None:
        flat = [i for level in levels for i in level]
        if not levels or any(not level for level in levels) or flat != sorted(set(flat)):
            raise ValueError(
                f"TimmBackbone({self.name}): levels must be non-empty lists of increasing, distinct "
                f"feature_info indices, shallowest level first; got {levels}"
            )
        if flat[0] < 0 or flat[-1] >= n:
            raise ValueError(
                f"TimmBackbone({self.name}): levels index the model's {n} feature_info entries (0..{n - 1}); "
                f"got {levels}"
            )

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, img: Tensor) -> list[Tensor]:
        """ImageNet-normalised images [N, 3, H, W] -> the maps of the selected levels [N, C, h_l, w_l]."""
        if self._renormalise:
            img = img * self.input_scale + self.input_shift
        selected = set(self.levels)
        indices, scales = [], []
        for info, index, scale in zip(self.available_info, self._indices, self._map_scale):
            if info.level in selected:
                indices.append(index)
                scales.append(scale)
        maps = self.model.forward_intermediates(img, indices=indices, intermediates_only=True)
        out = []
        for fmap, scale in zip(maps, scales):
            if scale != 1.0:
                size = (math.ceil(fmap.shape[-2] * scale), math.ceil(fmap.shape[-1] * scale))
                fmap = F.interpolate(fmap, size, mode="bilinear", align_corners=False)
            out.append(fmap)
        return out


def _where_to_download(name: str) -> str:
    """``Download <url or hub id>`` for the message of a failed pretrained download."""
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown name: the original error says so
        cfg = None
    if cfg is None:
        return f"Get a checkpoint of {name}"
    source = cfg.url or (f"the Hugging Face hub repository {cfg.hf_hub_id}" if cfg.hf_hub_id else None)
    return f"Download {source}" if source else f"Get a checkpoint of {name}"
