"""The frozen torchvision ResNet backbone: pre-ReLU block features, levels, eval mode, weights handling."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fss.backbones import BackboneWeightsError, ResNet
from tests.models.conftest import relative_error


@pytest.mark.parametrize(
    ("name", "n_feats", "channels"),
    [
        ("resnet18", 6, [128] * 2 + [256] * 2 + [512] * 2),
        ("resnet50", 13, [512] * 4 + [1024] * 6 + [2048] * 3),
    ],
)
def test_features_are_pre_relu_block_outputs(name, n_feats, channels):
    torch.manual_seed(0)
    bb = ResNet(name, weights=None)
    assert bb.select_levels(3) == (2, 3, 4)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    ref.load_state_dict(bb.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = bb(x)
        assert len(feats) == n_feats and [f.shape[1] for f in feats] == channels
        assert any((f < 0).any() for f in feats)  # taken before the ReLU
        # the last block's ReLU'd output equals torchvision's layer4 output, up to the rounding of
        # the BatchNorm folded into the convolutions
        assert relative_error(torch.relu(feats[-1]), _torchvision_layer4(ref, x)) < 1e-5


def _torchvision_layer4(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(stem))))


def test_folded_batchnorm_follows_new_weights():
    """The cached BatchNorm-folded weights are rebuilt after load_state_dict and in-place edits."""
    torch.manual_seed(0)
    bb = ResNet("resnet18", weights=None)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = bb(x)[-1]
        other = torchvision.models.resnet18(weights=None).eval()
        for m in other.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        bb.load_torchvision_state_dict(other.state_dict())
        after = bb(x)[-1]
        assert relative_error(torch.relu(after), _torchvision_layer4(other, x)) < 1e-5
        assert relative_error(after, before) > 1e-2
        bb.layer4[1].bn2.running_var.mul_(4.0)  # in place, as an optimiser or a hook would
        other.layer4[1].bn2.running_var.mul_(4.0)
        assert relative_error(torch.relu(bb(x)[-1]), _torchvision_layer4(other, x)) < 1e-5


def test_feature_info_describes_every_block_and_selection_keeps_the_deepest_levels():
    bb = ResNet("resnet50", weights=None)
    assert bb.feat_layers == [1] * 3 + [2] * 4 + [3] * 6 + [4] * 3  # every level until a model selects
    assert [(i.channels, i.stride) for i in bb.feature_info if i.module in ("layer1.0", "layer4.2")] == [
        (256, 4),
        (2048, 32),
    ]
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [
        (i.channels, 64 // i.stride, 64 // i.stride) for i in bb.feature_info
    ]
    assert bb.select_levels(2) == (3, 4) and bb.feat_layers == [3] * 6 + [4] * 3
    with torch.no_grad():
        assert len(bb(torch.randn(1, 3, 64, 64))) == 9
    with pytest.raises(ValueError, match="needs 5 feature levels.*has 4"):
        bb.select_levels(5)


def test_stays_in_eval_mode_and_frozen():
    bb = ResNet("resnet18", weights=None)
    torch.nn.Sequential(bb).train()
    assert not bb.training and not any(m.training for m in bb.modules())
    assert not any(p.requires_grad for p in bb.parameters())


def test_local_weights_file_fp16(tmp_path):
    src = torchvision.models.resnet18(weights=None)
    torch.save(
        {k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()},
        tmp_path / "r18.pth",
    )
    bb = ResNet("resnet18", weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(bb.conv1.weight, src.conv1.weight.half().float())


def test_missing_weights_file_says_how_to_fix(tmp_path):
    with pytest.raises(BackboneWeightsError, match="--model.backbone.weights"):
        ResNet("resnet18", weights=str(tmp_path / "nope.pth"))


def test_imagenet_weights_unavailable_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)
    with pytest.raises(BackboneWeightsError, match="--model.backbone.weights /path/to/resnet18"):
        ResNet("resnet18", weights="imagenet")


def test_wrong_architecture_weights():
    with pytest.raises(BackboneWeightsError, match="do not fit"):
        ResNet("resnet18", weights=None).load_torchvision_state_dict(
            torchvision.models.resnet34().state_dict()
        )


def test_large_cpu_inputs_run_channels_last_with_the_same_values(monkeypatch):
    torch.manual_seed(0)
    bb = ResNet("resnet18", weights=None)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fast = bb(x)
        monkeypatch.setattr(ResNet, "channels_last_min_pixels", 10**9)
        plain = bb(x)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in fast)
    assert all(f.is_contiguous() for f in plain)
    assert max(relative_error(a, b) for a, b in zip(fast, plain)) < 1e-5
