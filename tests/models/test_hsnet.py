"""HSNet: parity with the reference implementation, shapes, k-shot and checkpoint import."""

from __future__ import annotations

import pytest
import torch

from fss.models import HSNet
from fss.models.base import vote_masks
from tests.models.conftest import load_golden, relative_error


@pytest.fixture(scope="module")
def golden_hsnet() -> dict:
    return load_golden("hsnet_resnet50.pt")


@pytest.mark.parametrize("masking", ["fm", "hm"])
def test_parity_with_reference(masking, golden_inputs, golden_resnet50, golden_hsnet):
    net = HSNet("resnet50", masking=masking, weights=None).eval()
    net.backbone.load_torchvision_state_dict(golden_resnet50)
    net.load_reference_state_dict(golden_hsnet["learner_state_dict_fp16"])
    q, s, m = golden_inputs["query_img"], golden_inputs["support_imgs"], golden_inputs["support_masks"]
    with torch.inference_mode():
        logits = net(q, s[:, 0], m[:, 0])
        assert relative_error(logits, golden_hsnet[f"logit_mask_{masking}"]) <= 1e-4
        pred = net.predict_mask(q, s, m)
    assert torch.equal(pred, golden_hsnet[f"pred_mask_{masking}_3shot"].long())


def test_reference_checkpoint_with_module_prefix_and_backbone(tmp_path):
    src = HSNet("resnet18", masking="fm", weights=None)
    ckpt = {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    ckpt["module.backbone.fc.weight"] = torch.zeros(1000, 512)  # published checkpoints carry the classifier
    torch.save(ckpt, tmp_path / "best_model.pt")
    dst = HSNet("resnet18", masking="hm", weights=None)
    dst.load_reference_state_dict(tmp_path / "best_model.pt")
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        expected = a.half().float() if a.is_floating_point() else a
        assert torch.equal(expected, b), k


def test_checkpoint_mismatch_is_a_clear_error():
    net = HSNet("resnet18", weights=None)
    with pytest.raises(KeyError, match="hpn_learner"):
        net.load_reference_state_dict({"hpn_learner.bogus.weight": torch.zeros(1)})


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "resnet101"])
def test_shapes_any_k(backbone):
    torch.manual_seed(0)
    net = HSNet(backbone, masking="hm", weights=None).eval()
    q = torch.randn(2, 3, 64, 64)
    s = torch.randn(2, 3, 3, 64, 64)
    m = (torch.rand(2, 3, 64, 64) > 0.5).float()
    with torch.inference_mode():
        assert net(q, s[:, 0], m[:, 0]).shape == (2, 2, 64, 64)
        assert net.forward_shots(q, s, m).shape == (2, 3, 2, 64, 64)
        pred = net.predict_mask(q, s, m)
        assert pred.shape == (2, 64, 64) and pred.dtype == torch.long
        assert net.predict_mask(q, s, m, out_size=(50, 70)).shape == (2, 50, 70)


def test_kshot_matches_per_shot_calls():
    """Batched k-shot (query features computed once) equals K separate 1-shot calls."""
    torch.manual_seed(0)
    net = HSNet("resnet18", masking="hm", weights=None).eval()
    q = torch.randn(2, 3, 64, 64)
    s = torch.randn(2, 3, 3, 64, 64)
    m = (torch.rand(2, 3, 64, 64) > 0.5).float()
    with torch.inference_mode():
        shots = net.forward_shots(q, s, m)
        for k in range(3):
            torch.testing.assert_close(shots[:, k], net(q, s[:, k], m[:, k]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net(q, s, m), shots.mean(dim=1))
        assert torch.equal(net.predict_mask(q, s, m, rule="mean"), shots.mean(dim=1).argmax(dim=1))


def test_vote_rule_by_hand():
    # two episodes, 3 shots, 1 x 3 pixels; fg votes per pixel: ep0 = [3, 1, 2], ep1 = [0, 0, 0]
    fg = torch.tensor([[[1, 0, 1], [1, 0, 1], [1, 1, 0]], [[0, 0, 0]] * 3], dtype=torch.float)
    logits = torch.stack([-fg, fg], dim=2).view(2, 3, 2, 1, 3)
    expected = torch.tensor([[[1, 0, 1]], [[0, 0, 0]]])  # 3/3, 1/3 < 0.5, 2/3; max vote clamped to 1
    assert torch.equal(vote_masks(logits), expected)


def test_learner_trains_and_backbone_does_not():
    torch.manual_seed(0)
    net = HSNet("resnet18", masking="hm", weights=None).train()
    assert not net.backbone.training
    q, s = torch.randn(1, 3, 64, 64), torch.randn(1, 1, 3, 64, 64)
    m = torch.zeros(1, 1, 64, 64)
    m[..., 16:48, 16:48] = 1
    loss = net(q, s, m).logsumexp(dim=1).mean()
    loss.backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.learner.parameters())


@pytest.mark.parametrize("masking", ["fm", "im", "hm"])
def test_cpu_per_shot_path_changes_no_value(monkeypatch, masking):
    """CPU inference on large inputs runs one shot at a time: same logits as the batched path."""
    torch.manual_seed(0)
    net = HSNet("resnet18", masking=masking, weights=None).eval()
    q, s = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 3, 64, 64)
    m = (torch.rand(2, 3, 64, 64) > 0.5).float()
    calls = {"backbone": 0, "learner": 0}

    def counting(name, fn):
        return lambda *a: calls.__setitem__(name, calls[name] + 1) or fn(*a)

    monkeypatch.setattr(net.backbone, "forward", counting("backbone", net.backbone.forward))
    monkeypatch.setattr(net, "predict_logits", counting("learner", net.predict_logits))
    with torch.inference_mode():
        batched = net.forward_shots(q, s, m)
        assert calls == {"backbone": 1, "learner": 1}
        monkeypatch.setattr(HSNet, "cpu_per_shot_min_pixels", 64 * 64)
        per_shot = net.forward_shots(q, s, m)
    assert calls == {"backbone": 1 + 3, "learner": 1 + 3}  # query computed with the first shot only
    torch.testing.assert_close(per_shot, batched, rtol=1e-5, atol=1e-5)
