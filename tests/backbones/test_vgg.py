"""VGG-16-BN in PSPNet's five stages (the prototype family's other backbone): stages, ceil-mode pools, weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fss.backbones import BACKBONES, VGG16BN, BackboneWeightsError
from fss.backbones.vgg import imagenet_key


def test_stages_are_the_references_index_ranges_of_vgg16_bn_features():
    bb = VGG16BN(weights=None)
    # every module of torchvision's vgg16_bn.features (but the last max-pool) in order, in five stages
    ours = [m for stage in range(5) for m in getattr(bb, f"layer{stage}")]
    theirs = list(torchvision.models.vgg16_bn(weights=None).features)[:43]
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert [len(getattr(bb, f"layer{s}")) for s in range(5)] == [7, 7, 10, 10, 9]
    for a, b in zip(ours, theirs):
        if isinstance(a, nn.Conv2d):
            assert (a.in_channels, a.out_channels, a.padding, a.bias is not None) == (
                b.in_channels,
                b.out_channels,
                b.padding,
                True,
            )
        if isinstance(a, nn.MaxPool2d):
            assert a.ceil_mode  # the references round up (torchvision rounds down)
    assert BACKBONES["vgg16_bn"][0] is VGG16BN


def test_description_matches_the_returned_maps():
    torch.manual_seed(0)
    bb = VGG16BN(weights=None, width=8)
    assert [(i.channels, i.stride, i.level) for i in bb.feature_info] == [
        (16, 4, 1),
        (32, 8, 2),
        (64, 16, 3),
        (64, 16, 4),
    ]
    with torch.no_grad():
        feats = bb(torch.randn(2, 3, 97, 97))
        # 97 -> 49 (layer0) -> 25 -> 13 -> 7 (ceil-mode pools), layer4 keeps 7 x 7
        assert [tuple(f.shape) for f in feats] == [
            (2, 16, 25, 25),
            (2, 32, 13, 13),
            (2, 64, 7, 7),
            (2, 64, 7, 7),
        ]
        assert bb.select_levels(3) == (2, 3, 4)
        x = torch.randn(1, 3, 33, 33)
        f2, f3, f4 = bb(x)
        torch.testing.assert_close(bb.run_stages(f3, 4)[0], f4)
        torch.testing.assert_close(bb.run_stages(bb.stem(x), 1, 2)[1], f2)


def test_frozen_unless_trainable():
    bb = VGG16BN(weights=None, width=4).train()
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    tuned = VGG16BN(weights=None, width=4, trainable=True).train()
    assert tuned.training and all(p.requires_grad for p in tuned.parameters())


def test_loads_torchvisions_imagenet_file_and_reference_names(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.vgg16_bn(weights=None)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in tv.state_dict().items()}
    path = tmp_path / "vgg16_bn.pth"
    # features.* and classifier.* (ignored), as initmodel/vgg16_bn.pth; torchvision's download predates
    # BatchNorm's num_batches_tracked
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    # the classifier is 120M parameters the loader skips: same names, one number each keeps the file small
    sd.update({k: torch.zeros(1) for k in sd if k.startswith("classifier.")})
    torch.save(sd, path)
    bb = VGG16BN(weights=str(path))
    torch.testing.assert_close(bb.layer3[0].weight, sd["features.24.weight"])
    torch.testing.assert_close(bb.layer4[7].running_var, sd["features.41.running_var"])
    torch.testing.assert_close(bb.layer0[4].bias, sd["features.4.bias"])
    assert imagenet_key("features.14.weight") == "layer2.0.weight"
    assert imagenet_key("features.33.weight") == "layer3.9.weight"  # (a max-pool: no parameters)
    assert imagenet_key("layer2.0.weight") == "layer2.0.weight"
    # a checkpoint in the references' names (BAM / PSPNet: layer<k>.<i>) loads as it is
    other = VGG16BN(weights=None)
    other.load_reference_state_dict({"module." + k: v for k, v in bb.state_dict().items()})
    for key, value in bb.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_missing_or_wrong_weights_name_the_option_and_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackboneWeightsError, match=r"initmodel/vgg16_bn\.pth.*--model\.backbone\.weights"):
        VGG16BN(width=4)  # "imagenet": the references' initmodel/ folder
    with pytest.raises(BackboneWeightsError, match=r"nowhere\.pth.*--model\.backbone\.weights"):
        VGG16BN(weights=str(tmp_path / "nowhere.pth"), width=4)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneWeightsError, match="does not fit a vgg16_bn"):
        VGG16BN(weights=str(tmp_path / "bad.pth"), width=4)
