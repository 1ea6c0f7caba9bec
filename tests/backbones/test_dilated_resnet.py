"""The dilated deep-stem ResNet (PSPNet's, the prototype family's backbone): shapes, stride 8, weights."""

from __future__ import annotations

import pytest
import torch

from fss.backbones import BackboneWeightsError, DilatedResNet
from fss.backbones.dilated_resnet import reference_backbone_key


def test_description_matches_the_returned_maps_and_output_stride_is_8():
    torch.manual_seed(0)
    bb = DilatedResNet("resnet50", weights=None, width=8)
    assert [(i.channels, i.stride, i.level) for i in bb.feature_info] == [
        (32, 4, 1),
        (64, 8, 2),
        (128, 8, 3),
        (256, 8, 4),
    ]
    with torch.no_grad():
        feats = bb(torch.randn(2, 3, 65, 65))
    # 65 -> 33 (conv1, stride 2) -> 17 (max-pool) -> 9 (layer2), then layer3/layer4 keep 9 x 9
    assert [tuple(f.shape) for f in feats] == [(2, 32, 17, 17), (2, 64, 9, 9), (2, 128, 9, 9), (2, 256, 9, 9)]
    assert all((f >= 0).all() for f in feats)  # after the ReLU
    assert bb.select_levels(3) == (2, 3, 4)
    with torch.no_grad():
        x = torch.randn(1, 3, 33, 33)
        f2, f3, f4 = bb(x)
        # layer4 run from layer3's output is the forward pass's layer4
        torch.testing.assert_close(bb.run_stages(f3, 4)[0], f4)


def test_dilations_and_strides_are_pspnets():
    bb = DilatedResNet("resnet101", weights=None, width=4)
    assert len(bb.layer3) == 23 and bb.conv3.out_channels == 8 and bb.layer1[0].downsample[0].in_channels == 8
    for stage, dilation in ((3, 2), (4, 4)):
        layer = getattr(bb, f"layer{stage}")
        assert {b.conv2.dilation for b in layer} == {(dilation, dilation)}
        assert {b.conv2.padding for b in layer} == {(dilation, dilation)}
        assert layer[0].conv2.stride == (1, 1) and layer[0].downsample[0].stride == (1, 1)
    assert bb.layer2[0].conv2.stride == (2, 2) and bb.layer2[0].conv2.dilation == (1, 1)


def test_frozen_and_in_eval_mode():
    bb = DilatedResNet("resnet50", weights=None, width=4).train()
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())


def test_loads_a_pspnet_style_imagenet_file_and_reference_stem_names(tmp_path):
    torch.manual_seed(0)
    src = DilatedResNet("resnet50", weights=None, width=4)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 32), torch.zeros(1000)  # ImageNet head: ignored
    path = tmp_path / "resnet50_v2.pth"
    torch.save(sd, path)
    bb = DilatedResNet("resnet50", weights=str(path), width=4)
    torch.testing.assert_close(bb.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])
    # a BAM/PFENet checkpoint names the stem layer0.<index of the Sequential>
    assert reference_backbone_key("layer0.3.weight") == "conv2.weight"
    assert reference_backbone_key("layer0.7.running_var") == "bn3.running_var"
    assert reference_backbone_key("layer3.0.conv2.weight") == "layer3.0.conv2.weight"


def test_missing_or_wrong_weights_name_the_option_and_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        BackboneWeightsError, match=r"initmodel/resnet101_v2\.pth.*--model\.backbone\.weights"
    ):
        DilatedResNet("resnet101", width=4)  # "imagenet": the references' initmodel/ folder
    with pytest.raises(BackboneWeightsError, match=r"nowhere\.pth.*--model\.backbone\.weights"):
        DilatedResNet("resnet50", weights=str(tmp_path / "nowhere.pth"), width=4)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneWeightsError, match="does not fit a dilated_resnet50"):
        DilatedResNet("resnet50", weights=str(tmp_path / "bad.pth"), width=4)
    with pytest.raises(ValueError, match="unknown dilated ResNet"):
        DilatedResNet("resnet18", weights=None)
