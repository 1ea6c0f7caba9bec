"""timm models as frozen backbones: ViT levels and pyramid, CNN stages, renormalisation, weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from fss.backbones import BACKBONES, BackboneWeightsError, TimmBackbone
from fss.models import HSNet

#: the DINOv2 ViT-S/14 architecture narrowed (random weights)
TINY_VIT = {"depth": 4, "embed_dim": 48, "num_heads": 2}


def tiny_vit(**kwargs) -> TimmBackbone:
    torch.manual_seed(0)
    return TimmBackbone(
        "vit_small_patch14_dinov2", weights=None, model_kwargs=TINY_VIT | kwargs.pop("extra", {}), **kwargs
    )


def test_vit_levels_and_simple_pyramid_strides():
    bb = tiny_vit(extra={"depth": 12})
    # 12 blocks in 4 levels of 3; strides p/4, p/2, p, 2p for patch p = 14
    assert [(i.level, i.module) for i in bb.feature_info][:4] == [
        (1, "blocks.0"), (1, "blocks.1"), (1, "blocks.2"), (2, "blocks.3"),
    ]  # fmt: skip
    assert sorted({(i.level, i.stride) for i in bb.feature_info}) == [
        (1, 3.5),
        (2, 7.0),
        (3, 14.0),
        (4, 28.0),
    ]
    assert {i.channels for i in bb.feature_info} == {48}
    with torch.no_grad():
        feats = bb(torch.randn(2, 3, 70, 56))  # 5 x 4 tokens
    sides = [(f.shape[-2], f.shape[-1]) for f in feats]
    assert sides == [(20, 16)] * 3 + [(10, 8)] * 3 + [(5, 4)] * 3 + [(3, 2)] * 3


def test_pyramid_maps_are_the_resampled_block_outputs():
    bb = tiny_vit()
    x = torch.randn(1, 3, 56, 56)  # 4 x 4 tokens
    with torch.no_grad():
        feats = bb(x)
        raw = bb.model.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
    torch.testing.assert_close(feats[2], raw[2])  # scale 1
    # scale 0.5 of a 4 x 4 map: bilinear at the centres of 2 x 2 blocks = their mean
    torch.testing.assert_close(feats[3], F.avg_pool2d(raw[3], 2))
    torch.testing.assert_close(feats[1], F.interpolate(raw[1], scale_factor=2, mode="bilinear"))


def test_explicit_levels_and_scales():
    bb = tiny_vit(levels=[[1], [2, 3]], pyramid_scales=[1.0, 0.5])
    assert [(i.level, i.stride, i.module) for i in bb.feature_info] == [
        (1, 14.0, "blocks.1"), (2, 28.0, "blocks.2"), (2, 28.0, "blocks.3"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="levels must be non-empty lists of increasing"):
        tiny_vit(levels=[[2], [1]])
    with pytest.raises(ValueError, match="levels index the model's 4 feature_info entries"):
        tiny_vit(levels=[[0], [4]])
    with pytest.raises(ValueError, match="pyramid_scales needs one positive factor per level"):
        tiny_vit(levels=[[0], [1]], pyramid_scales=[1.0])


def test_cnn_stages_are_levels_without_resampling():
    bb = TimmBackbone("resnet18", weights=None)
    assert [(i.level, i.channels, i.stride, i.module) for i in bb.feature_info] == [
        (1, 64, 4, "layer1"), (2, 128, 8, "layer2"), (3, 256, 16, "layer3"), (4, 512, 32, "layer4"),
    ]  # fmt: skip
    with torch.no_grad():
        assert [f.shape[-1] for f in bb(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="level 1 mixes strides"):
        TimmBackbone("resnet18", weights=None, levels=[[1, 2], [3]])


def test_frozen_and_in_eval_mode():
    bb = tiny_vit()
    torch.nn.Sequential(bb).train()
    assert not bb.training and not any(m.training for m in bb.modules())
    assert not any(p.requires_grad for p in bb.parameters())


def test_another_input_normalisation_is_converted():
    """A model pretrained with mean = std = 0.5 sees a masked pixel (0: the ImageNet mean) as that colour."""
    bb = TimmBackbone("vit_tiny_patch16_224", weights=None, model_kwargs={"depth": 1})
    assert bb.model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    seen = []
    bb.model.patch_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        bb(torch.zeros(1, 3, 32, 32))
    expected = (torch.tensor([0.485, 0.456, 0.406]) - 0.5) / 0.5
    torch.testing.assert_close(seen[0][0, :, 0, 0], expected)


def test_local_weights_file(tmp_path):
    source = timm.create_model("vit_small_patch14_dinov2", num_classes=0, **TINY_VIT)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    bb = TimmBackbone("vit_small_patch14_dinov2", weights=str(tmp_path / "vit.pth"), model_kwargs=TINY_VIT)
    torch.testing.assert_close(bb.model.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)
    with pytest.raises(BackboneWeightsError, match="--model.backbone.weights PATH"):
        TimmBackbone("vit_small_patch14_dinov2", weights=str(tmp_path / "nope.pth"))


def test_pretrained_weights_unavailable_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    with pytest.raises(BackboneWeightsError, match="network unreachable") as err:
        TimmBackbone(BACKBONES["dinov2_vits14"][1]["name"], weights="pretrained")
    message = str(err.value)
    assert "dinov2_vits14_pretrain.pth" in message and "--model.backbone.weights /path/to/file" in message


def test_a_model_needing_more_levels_names_the_option():
    with pytest.raises(ValueError, match="HSNet needs 3 feature levels.*has 2.*levels"):
        HSNet(tiny_vit(levels=[[0, 1], [2, 3]]), masking="fm")
