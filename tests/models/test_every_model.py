"""Every registered model x every registered masking x each backbone family: shapes, a training step,
k-shot inference, the frozen backbone unchanged.

The lists come from the registries (``fss.models.MODELS``, ``fss.masking.MASKINGS``), so a new model
or strategy is tested here the day it is registered. Tiny sizes keep it fast: 56 px images, a random
ResNet-18 and a random 4-block ViT with 14 px patches (the DINOv2 architecture, narrowed).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fss.backbones import FeatureBackbone, ResNet, TimmBackbone
from fss.masking import MASKINGS
from fss.models import MODELS, FewShotSegmenter
from fss.models.base import aggregate_shots

SIZE = 56
SHOTS = 2
#: a DINOv2 ViT-S/14 narrowed to 4 blocks of width 48 (random weights)
TINY_VIT = {"depth": 4, "embed_dim": 48, "num_heads": 2}
BACKBONES: dict[str, Callable[[], FeatureBackbone]] = {
    "resnet": lambda: ResNet("resnet18", weights=None),
    "vit": lambda: TimmBackbone("vit_small_patch14_dinov2", weights=None, model_kwargs=TINY_VIT),
}
#: model options that keep a CPU step cheap
CHEAP = {
    "vat": {"feature_size": 8},
    "bam": {"reduce_dim": 16, "base_classes": list(range(15))},
    "ntrenet": {"reduce_dim": 16, "ppm_scales": [4, 2]},
}


def build(name: str, masking: str, family: str) -> FewShotSegmenter:
    torch.manual_seed(0)
    return MODELS[name](backbone=BACKBONES[family](), masking=masking, **CHEAP.get(name, {}))


def episode(shots: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 3, SIZE, SIZE, generator=gen)
    supports = torch.randn(1, shots, 3, SIZE, SIZE, generator=gen)
    masks = torch.zeros(1, shots, SIZE, SIZE)
    masks[..., SIZE // 4 : 3 * SIZE // 4, SIZE // 5 : 4 * SIZE // 5] = 1
    return query, supports, masks


@pytest.mark.parametrize("family", sorted(BACKBONES))
@pytest.mark.parametrize("masking", sorted(MASKINGS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_step_and_kshot_inference(name: str, masking: str, family: str) -> None:
    """One training step (the model's own training loss) on a 1-shot episode, then 2-shot inference
    (VAT's cost keeps it at one pair)."""
    net = build(name, masking, family).train()
    backbone_state = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    query, supports, masks = episode(shots=1)

    target = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    target[:, SIZE // 3 :, SIZE // 3 :] = 1
    batch = {"query_img": query, "support_imgs": supports, "support_masks": masks, "query_mask": target,
             "class_id": torch.tensor([0])}  # fmt: skip
    loss, logits, _ = net.training_loss(batch, torch.nn.functional.cross_entropy)
    assert logits.shape == (1, 2, SIZE, SIZE) and torch.isfinite(logits).all()
    loss.backward()
    trainable = [(n, p) for n, p in net.learner.named_parameters() if p.requires_grad]
    assert trainable
    for param_name, param in trainable:
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)
    assert all(p.grad is None and not p.requires_grad for p in net.backbone.parameters())
    torch.optim.SGD([p for _, p in trainable], lr=0.1).step()
    assert not net.backbone.training
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, backbone_state[key]), f"backbone {key} changed"

    net.eval()
    query, supports, masks = episode(shots=SHOTS, seed=1)
    with torch.inference_mode():
        maps = net.forward_shots(query, supports, masks)
    pred = aggregate_shots(maps, "vote")  # what predict_mask returns
    assert maps.shape == (1, 1 if net.fuses_shots else SHOTS, 2, SIZE, SIZE) and torch.isfinite(maps).all()
    assert (
        pred.shape == (1, SIZE, SIZE) and pred.dtype == torch.long and set(pred.unique().tolist()) <= {0, 1}
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_levels_come_from_the_backbone_description(name: str) -> None:
    """A model reads the deepest ``num_levels`` levels of any backbone, never a stage number."""
    for family in BACKBONES:
        net = build(name, "fm", family)
        available = sorted({i.level for i in net.backbone.available_info})
        assert net.levels == tuple(available[-net.num_levels :])
        assert {i.level for i in net.backbone.feature_info} == set(net.levels)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fscs_episode_through_the_ifsl_head(name: str) -> None:
    """Every model runs 2-way 2-shot FS-CS episodes: presence, (N+1)-class masks, L_S gradients.

    The head only reads the network's way logits (``FewShotSegmenter.way_logits``), so one masking
    (HM, which needs both backbone passes) stands for all here; the parity tests (``test_fscs.py``)
    cover FM, none and HM against the reference, and the test above every strategy in every model.

    The ways do not interact: in eval mode (no dropout draws) each way's logits equal those of the
    way run alone (one backbone call serves all ways, the query's features repeated per way).
    """
    from fss.models.ifsl import episode_way_logits, predict_episode, segmentation_loss

    net = build(name, "hm", "resnet").train()
    shots = 1 if name == "vat" else 2  # VAT's cost: one shot per way
    query, supports, masks = episode(shots=2 * shots)
    supports = supports.view(1, 2, shots, 3, SIZE, SIZE)
    masks = masks.view(1, 2, shots, SIZE, SIZE)
    masks[:, 1, :, : SIZE // 2] = 0  # the two ways differ
    classes = torch.tensor([[3, 7]])  # training: the ways' classes (BAM leaves each out of its base map)
    logits = episode_way_logits(net, query, supports, masks, classes)  # [1, 2, S, 2, h, w]
    assert logits.shape[:3] == (1, 2, 1 if net.fuses_shots else shots)

    prediction = predict_episode(logits, (SIZE, SIZE))
    assert prediction.presence.shape == (1, 2) and prediction.presence.dtype == torch.bool
    assert prediction.mask.shape == (1, SIZE, SIZE) and int(prediction.mask.max()) <= 2
    target = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    target[:, : SIZE // 2] = 1
    segmentation_loss(prediction.merged, target).backward()
    grads = [p.grad for p in net.learner.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

    net.eval()
    with torch.no_grad():
        both = episode_way_logits(net, query, supports, masks)
        alone = episode_way_logits(net, query, supports[:, 1:], masks[:, 1:])
    assert both.shape == logits.shape
    torch.testing.assert_close(both[:, 1:], alone, rtol=1e-4, atol=1e-5)
