"""ASNet: parity with the reference implementation, support pooling, attention masking, shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fss.masking import FeatureMasking, HybridMasking, NoMasking
from fss.models.aslayer import Attention
from fss.models.asnet import (
    ASNet,
    AttentionLearner,
    fit_support_dims,
    pool_large_feats,
)
from fss.models.base import aggregate_shots
from fss.models.correlation import multilayer_correlation
from tests.models.conftest import load_golden, relative_error

#: the golden files name the reference ASNet's support masking (attention only) "fm"; here it is "none"
GOLDEN_NAME = {"none": "fm", "hm": "hm"}


@pytest.fixture(scope="module")
def golden_asnet() -> dict:
    return load_golden("asnet_resnet50.pt")


@pytest.fixture(scope="module", params=["none", "hm"])
def golden_run(
    request, golden_inputs, golden_resnet50, golden_asnet
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """Ours on the golden inputs: (masking, 1-shot logits [2,2,400,400], 3-shot mask of episode 0).

    The 400 px forward is slow on CPU, so each pair is computed once: episode 0 with all three
    shots (``forward_shots``; its shot 0 gives the 1-shot logits and ``aggregate_shots`` of all
    three is exactly what ``predict_mask`` returns) and episode 1 with its first shot only. In
    eval mode the episodes of a batch do not interact, so this equals the batched calls.
    """
    net = ASNet("resnet50", masking=request.param, weights=None).eval()
    net.backbone.load_torchvision_state_dict(golden_resnet50)
    net.load_reference_state_dict(golden_asnet["learner_state_dict_fp16"])
    q, s, m = golden_inputs["query_img"], golden_inputs["support_imgs"], golden_inputs["support_masks"]
    with torch.inference_mode():
        shots0 = net.forward_shots(q[:1], s[:1], m[:1])  # [1, 3, 2, H, W]
        logits1 = net(q[1:], s[1:, 0], m[1:, 0])  # [1, 2, H, W]
    return GOLDEN_NAME[request.param], torch.cat([shots0[:, 0], logits1]), aggregate_shots(shots0, "vote")


def test_parity_logits(golden_run, golden_asnet):
    masking, logits, _ = golden_run
    assert logits.shape == (2, 2, 400, 400)
    assert relative_error(logits, golden_asnet[f"logit_mask_{masking}"]) <= 1e-4


@pytest.mark.slow
def test_parity_3shot_mask(golden_run, golden_asnet):
    masking, _, mask3 = golden_run
    assert torch.equal(mask3[0], golden_asnet[f"pred_mask_{masking}_3shot"][0].long())


def test_masking_names_mean_the_same_operation_as_elsewhere():
    """The reference ASNet masks through its attention only ("none"); "fm" multiplies, as in every model."""
    feats = [torch.randn(2, 4, 5, 5)]
    mask = torch.zeros(2, 20, 20)
    assert type(ASNet("resnet18", masking="none", weights=None).masking) is NoMasking
    assert type(ASNet("resnet18", masking="fm", weights=None).masking) is FeatureMasking
    assert torch.equal(NoMasking()(feats, None, mask)[0], feats[0])
    assert not torch.equal(FeatureMasking()(feats, None, mask)[0], feats[0])
    assert isinstance(ASNet("resnet18", masking="hm", weights=None).masking, HybridMasking)


def test_support_pooling_threshold():
    wide, narrow = torch.randn(1, 2, 50, 50), torch.randn(1, 2, 49, 49)
    pooled, same = pool_large_feats([wide, narrow], pool_thr=50)
    assert pooled.shape == (1, 2, 25, 25) and same is narrow
    # 3x3 average with zero padding counted: the corner sees 4 of 9 values
    torch.testing.assert_close(pooled[0, 0, 0, 0], wide[0, 0, :2, :2].sum() / 9)
    net = ASNet("resnet18", weights=None, pool_thr=10)
    assert net.prepare_support_feats([narrow])[0].shape == (1, 2, 25, 25)


def test_attention_ignores_keys_outside_the_support_mask():
    """With the (position-mixing) GroupNorms removed, support positions outside the mask act
    only on their own output: as keys and values they are masked out."""
    torch.manual_seed(0)
    attn = Attention(32, 32, kernel_size=1, stride=1, padding=0).eval()  # identity shortcut
    attn.agg = nn.Conv3d(16, 32, kernel_size=1)
    attn.out_norm = nn.Identity()
    mask = torch.zeros(1, 6, 6)
    mask[:, :, :3] = 1  # support columns 0..2 are foreground (a 6 x 6 grid: no resizing)
    x = torch.rand(1, 32, 3, 6, 6)  # [N, C, T query positions, hb, wb]
    x2 = x.clone()
    x2[..., 3:] = torch.rand(1, 32, 3, 6, 3)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask)[..., :3], attn(x2, mask)[..., :3])
        full = torch.ones(1, 6, 6)
        assert not torch.allclose(attn(x, full)[..., :3], attn(x2, full)[..., :3], atol=1e-4)


@pytest.mark.parametrize("image_size", [400, 473])
def test_reference_sizes_squeeze_support_to_2x2(image_size):
    """At the reference's image sizes the stage-3/2 squeezes already give 2 x 2 (no adaptation)."""
    torch.manual_seed(0)
    net = ASNet("resnet18", masking="fm", weights=None).eval()  # same feature sizes as ResNet-50
    learner: AttentionLearner = net.learner
    with torch.no_grad():
        feats = net.backbone(torch.randn(1, 3, image_size, image_size))
        support = net.prepare_support_feats(feats)
        query = [f[..., :2, :2] for f in feats]  # query dims do not affect the support arithmetic
        corr4, corr3, corr2 = multilayer_correlation(query, support, net.backbone.feat_layers)
        mask = torch.ones(1, image_size, image_size)
        assert learner.encoder_layer3(corr3, mask).shape[-2:] == (2, 2)
        assert learner.encoder_layer2(corr2, mask).shape[-2:] == (2, 2)
    x = torch.randn(1, 2, 3, 3, 2, 2)
    assert fit_support_dims(x) is x
    assert fit_support_dims(torch.randn(1, 2, 3, 3, 1, 1)).shape == (1, 2, 3, 3, 2, 2)


def test_learner_keys_and_reference_import():
    net = ASNet("resnet18", masking="hm", weights=None)
    assert isinstance(net.learner, AttentionLearner)
    keys = [k for k in net.state_dict() if not k.startswith("backbone.")]
    assert keys and all(k.startswith("learner.") for k in keys)
    assert "learner.encoder_layer4.0.attn.short_cut.0.weight" in keys
    assert not any(k.startswith("learner.encoder_layer4to3.0.attn.short_cut") for k in keys)  # identity
    src = {k: v.half() for k, v in net.learner.state_dict().items()}
    other = ASNet("resnet18", masking="fm", weights=None)
    other.load_reference_state_dict({f"learner.{k}": v for k, v in src.items()})
    for k, v in other.learner.state_dict().items():
        assert torch.equal(v, src[k].float()), k
    with pytest.raises(KeyError, match="learner"):
        other.load_reference_state_dict({"learner.bogus.weight": torch.zeros(1)})


@pytest.mark.parametrize(("backbone", "masking"), [("resnet50", "hm"), ("resnet101", "fm")])
def test_shapes_any_k(backbone, masking):
    torch.manual_seed(0)
    net = ASNet(backbone, masking=masking, weights=None).eval()
    q = torch.randn(2, 3, 128, 128)
    s = torch.randn(2, 2, 3, 128, 128)
    m = (torch.rand(2, 2, 128, 128) > 0.5).float()
    with torch.inference_mode():
        logits = net(q, s[:, 0], m[:, 0])  # K = 1
        assert logits.shape == (2, 2, 128, 128) and torch.isfinite(logits).all()
        pred = net.predict_mask(q[:1], s[:1], m[:1])  # K = 2
        assert pred.shape == (1, 128, 128) and pred.dtype == torch.long


def test_query_and_support_of_different_sizes_and_gradients():
    torch.manual_seed(0)
    net = ASNet("resnet18", masking="fm", weights=None)
    q = torch.randn(1, 3, 64, 64)
    s = torch.randn(1, 3, 96, 96)
    m = (torch.rand(1, 96, 96) > 0.5).float()
    logits = net(q, s, m)
    assert logits.shape == (1, 2, 64, 64)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.learner.parameters())
    assert all(p.grad is None for p in net.backbone.parameters())
