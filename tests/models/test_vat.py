"""VAT: parity with the public reference (opt-in), seeded regression, shapes, k-shot, checkpoint
import, the support-resize order, the frozen unused parameters and gradient checkpointing.

VAT's learner works on fixed-size features (``feature_size`` 16 in the reference, whatever the image
size), so the fast tests use ``feature_size=8`` (same parameters, ~16x cheaper) and 64 x 64 images.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fss.models.swin4d import (
    SwinBlock,
    SwinLayer,
    VolumeSwin,
    WindowAttention,
    set_gradient_checkpointing,
    window_merge,
    window_partition,
)
from fss.models.vat import VAT
from tests.models.conftest import relative_error

SIZE = 64


def _episode(seed: int, batch: int = 1, shots: int = 1, size: int = SIZE):
    """Seeded random query [B,3,S,S], supports [B,K,3,S,S] and centred-square masks [B,K,S,S]."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 3, size, size, generator=gen)
    supports = torch.randn(batch, shots, 3, size, size, generator=gen)
    masks = torch.zeros(batch, shots, size, size)
    masks[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return query, supports, masks


@pytest.fixture(scope="module")
def vat_r50() -> VAT:
    torch.manual_seed(0)
    return VAT("resnet50", masking="hm", weights=None, benchmark="coco", feature_size=8).eval()


# -- parity with the public VAT code (opt-in: the reference outputs are ~120 MB) -------------------
@pytest.fixture(scope="module")
def vat_reference() -> dict:
    path = os.environ.get("FSS_VAT_REF")
    if not path:
        pytest.skip(
            "VAT parity needs the reference outputs: set FSS_VAT_REF to the file saved by running the "
            "public VAT code (learner_state_dict, logit_mask_fm, logit_mask_hm; see docs/vat.md)"
        )
    if not Path(path).is_file():
        pytest.skip(f"FSS_VAT_REF={path} is not a file")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("masking", ["fm", "hm"])
def test_parity_with_reference(masking, vat_reference, golden_inputs, golden_resnet50):
    net = VAT("resnet50", masking=masking, weights=None, benchmark="coco").eval()
    net.backbone.load_torchvision_state_dict(golden_resnet50)
    net.load_reference_state_dict(vat_reference["learner_state_dict"])
    q, s, m = golden_inputs["query_img"], golden_inputs["support_imgs"], golden_inputs["support_masks"]
    with torch.inference_mode():
        logits = net(q, s[:, 0], m[:, 0])
    assert relative_error(logits, vat_reference[f"logit_mask_{masking}"]) <= 1e-4


# -- seeded regression (numbers from the parity-verified implementation) ---------------------------
REGRESSION = {
    "mean": 0.5561597,
    "std": 0.9775642,
    "corner": [0.1223562, 0.6257775],
    "centre": [1.7606984, -0.3645521],
}


def test_seeded_regression_and_two_shots(vat_r50):
    """Per-shot logits of a 2-shot episode; shot 0 is compared with stored numbers."""
    q, s, m = _episode(1, shots=2)
    with torch.inference_mode():
        shots = vat_r50.forward_shots(q, s, m)
    assert shots.shape == (1, 2, 2, SIZE, SIZE)
    logits = shots[:, 0]
    got = {
        "mean": logits.mean().item(),
        "std": logits.std().item(),
        "corner": logits[0, :, 0, 0].tolist(),
        "centre": logits[0, :, SIZE // 2, SIZE // 2].tolist(),
    }
    for key, expected in REGRESSION.items():
        assert got[key] == pytest.approx(expected, rel=1e-3, abs=1e-5), key


VOLUME_REGRESSION = {"mean": 0.00086581, "std": 0.07628033, "first": 0.00998342}


def test_shifted_4d_swin_regression():
    """The 4D shifted-window path (not reached with feature_size=8) on an 8^4 volume."""
    torch.manual_seed(0)
    swin = VolumeSwin(128, (8, 8, 8, 8), depth=2, num_heads=4, window=4).eval()
    assert swin.transformer.layer.blocks[1].shift == 2
    x = torch.randn(1, 128, 8, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        y = swin(x)
    assert y.shape == x.shape
    update = y - x  # what the blocks add (the residual stream itself would dominate the statistics)
    got = {"mean": update.mean().item(), "std": update.std().item(), "first": update[0, 0, 0, 0, 0, 0].item()}
    for key, expected in VOLUME_REGRESSION.items():
        assert got[key] == pytest.approx(expected, rel=1e-3, abs=1e-5), key


def test_window_partition_roundtrip():
    x = torch.randn(2, 8, 4, 8, 4, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 1 * 2 * 1, 4**4, 3)
    assert torch.equal(windows[0].view(4, 4, 4, 4, 3), x[0, :4, :4, :4, :4])
    assert torch.equal(window_merge(windows, 4, (8, 4, 8, 4)), x)


def test_window_shrinks_to_small_resolutions():
    block = SwinBlock(16, (4, 4, 4, 4), num_heads=4, window=8, shift=4)
    assert (block.window, block.shift, block.attn_mask) == (4, 0, None)


# -- shapes and k-shot -----------------------------------------------------------------------------
def test_shapes_resnet101():
    torch.manual_seed(0)
    net = VAT("resnet101", masking="fm", weights=None, benchmark="pascal", feature_size=8).eval()
    # conv4_x has 23 blocks: the stage-3 correlation has 23 channels
    assert net.hpn_learner.ours.encoders[1].conv4d[0][0].query_conv.in_channels == 23
    q, s, m = _episode(3, size=48)
    pred = net.predict_mask(q, s, m)
    assert pred.shape == (1, 48, 48) and pred.dtype == torch.long
    assert set(pred.unique().tolist()) <= {0, 1}


# -- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bench", "affinity", "decoder_in"),
    [
        ("pascal", (False, True, True), (128, 96 + 32, 48 + 16)),
        ("coco", (False, False, True), (128, 96, 48 + 16)),
        ("fss1000", (True, True, True), (128 + 64, 96 + 32, 48 + 16)),
        ("fss", (True, True, True), (128 + 64, 96 + 32, 48 + 16)),
    ],
)
def test_feature_affinity_per_benchmark(bench, affinity, decoder_in):
    net = VAT("resnet18", masking="hm", weights=None, benchmark=bench, feature_size=8)
    ours = net.hpn_learner.ours
    assert ours.feature_affinity == affinity
    assert tuple(stage[0].transformer.norm.normalized_shape[0] for stage in ours.swin_decoder) == decoder_in
    # unused query projections are kept for checkpoints but frozen
    for proj, used in zip(ours.proj_query_feat, affinity):
        assert all(p.requires_grad == used for p in proj.parameters())


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="benchmark"):
        VAT("resnet18", weights=None, benchmark="voc")
    with pytest.raises(ValueError, match="multiple of 8"):
        VAT("resnet18", weights=None, feature_size=12)


@pytest.mark.parametrize(
    ("masking", "before"), [("fm", True), ("hm", False), ("im", False), ("hm_add", False)]
)
def test_support_resize_order(masking, before):
    """Original VAT (fm) resizes support features before masking; the HM code masks first."""
    net = VAT("resnet18", masking=masking, weights=None, feature_size=8)
    assert net.resize_before_masking is before
    feats = [
        torch.randn(1, c, 64 // 2 ** (lid + 1), 64 // 2 ** (lid + 1))
        for c, lid in zip(net.backbone.feat_channels, net.backbone.feat_layers)
    ]
    prepared = net.prepare_support_feats(feats)
    assert len(prepared) == 1 + 2 + 2 + 2  # last block of conv2_x, then conv3_x..conv5_x (ResNet-18)
    sides = [f.shape[-1] for f in prepared]
    assert sides == ([64, 32, 32, 16, 16, 8, 8] if before else [16, 8, 8, 4, 4, 2, 2])


# -- checkpoints -----------------------------------------------------------------------------------
REFERENCE_KEYS = {  # a few parameter names and shapes of the public VAT (ResNet-50, COCO)
    "hpn_learner.ours.encoders.2.conv4d.0.0.query_conv.weight": (32, 4, 3, 3),
    "hpn_learner.ours.encoders.0.conv4d.1.1.weight": (128,),
    "hpn_learner.ours.transformer.0.transformer.layer.blocks.3.attn.relative_position_bias_table": (2401, 4),
    "hpn_learner.ours.transformer.2.transformer.norm.bias": (128,),
    "hpn_learner.ours.swin_decoder.2.0.transformer.layers.0.blocks.1.mlp.fc2.weight": (64, 256),
    "hpn_learner.ours.swin_decoder.0.1.weight": (96, 128, 1, 1),
    "hpn_learner.ours.decoder.2.weight": (2, 32, 3, 3),
    "hpn_learner.ours.proj_query_feat.0.0.weight": (64, 1024, 1, 1),
}


def test_reference_key_names_and_parameter_count(vat_r50):
    sd = vat_r50.state_dict()
    for key, shape in REFERENCE_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    # the reference learner (COCO, ResNet-50) has 3,006,490 parameters; buffers are not saved here
    assert sum(p.numel() for p in vat_r50.hpn_learner.parameters()) == 3_006_490
    assert not any(k.endswith(("attn_mask", "relative_position_index")) for k in sd)


def test_reference_checkpoint_with_buffers_prefix_and_backbone(tmp_path):
    torch.manual_seed(0)
    src = VAT("resnet18", masking="fm", weights=None, feature_size=8)
    ckpt = {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    # the reference also saves its derived buffers (mask and index) and the classifier
    for name, module in src.named_modules():
        if isinstance(module, SwinBlock):
            ckpt[f"module.{name}.attn.relative_position_index"] = module.attn.relative_position_index
            if module.attn_mask is not None:
                ckpt[f"module.{name}.attn_mask"] = module.attn_mask
    ckpt["module.backbone.fc.weight"] = torch.zeros(1000, 512)
    torch.save(ckpt, tmp_path / "best_model.pt")
    dst = VAT("resnet18", masking="hm", weights=None, feature_size=8)
    dst.load_reference_state_dict(tmp_path / "best_model.pt")
    for (key, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a.half().float() if a.is_floating_point() else a, b), key
    with pytest.raises(KeyError, match="hpn_learner"):
        dst.load_reference_state_dict({"hpn_learner.ours.bogus.weight": torch.zeros(1)})


# -- training --------------------------------------------------------------------------------------
def _learner_inputs(net: VAT, seed: int):
    """Random correlations and query features of the sizes the learner expects (batch 1)."""
    gen = torch.Generator().manual_seed(seed)
    s = net.feature_size
    ours = net.hpn_learner.ours
    corrs = [
        torch.rand(1, enc.conv4d[0][0].query_conv.in_channels, side, side, side, side, generator=gen)
        for enc, side in zip(ours.encoders, (s, 2 * s, 4 * s))
    ]
    feats = [
        torch.randn(1, proj[0].in_channels, side, side, generator=gen)
        for proj, side in zip(ours.proj_query_feat, (2 * s, 4 * s, 8 * s))
    ]
    return corrs, feats


def test_gradient_checkpointing_recomputes_blocks_with_same_gradients(monkeypatch):
    torch.manual_seed(0)
    swin = VolumeSwin(16, (4, 4, 4, 4), depth=2, num_heads=4, window=2).train()
    assert swin.transformer.layer.blocks[1].shift == 1
    x = torch.randn(1, 16, 4, 4, 4, 4)
    calls = []
    attention_forward = WindowAttention.forward

    def counting_forward(self, *args, **kwargs):
        calls.append(1)
        return attention_forward(self, *args, **kwargs)

    monkeypatch.setattr(WindowAttention, "forward", counting_forward)
    grads = []
    for enabled in (False, True):
        set_gradient_checkpointing(swin, enabled)
        swin.zero_grad(set_to_none=True)
        calls.clear()
        xg = x.clone().requires_grad_(True)
        swin(xg).square().mean().backward()
        assert len(calls) == 2 * (2 if enabled else 1)  # checkpointed blocks run again in backward
        grads.append([xg.grad, *(p.grad for p in swin.parameters() if p.requires_grad)])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain)


def test_training_step_with_checkpointing_uses_every_trainable_parameter():
    """One learner forward/backward: logits at 8s x 8s; every trainable parameter gets a gradient
    (no unused parameters for DDP) and the frozen ones (kept for checkpoints) never do."""
    torch.manual_seed(0)
    net = VAT(
        "resnet18",
        masking="hm",
        weights=None,
        benchmark="pascal",
        feature_size=8,
        gradient_checkpointing=True,
    )
    net.train()
    layers = [m for m in net.hpn_learner.modules() if isinstance(m, SwinLayer)]
    assert len(layers) == 6 and all(layer.gradient_checkpointing for layer in layers)
    corrs, feats = _learner_inputs(net, 5)
    logits = net.hpn_learner(corrs, feats)
    assert logits.shape == (1, 2, 64, 64)
    logits.square().mean().backward()
    for name, p in net.hpn_learner.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert all(p.grad is None for p in net.backbone.parameters())
