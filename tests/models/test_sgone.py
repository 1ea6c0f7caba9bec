"""SG-One-style baseline: masked average pooling, prototype fusion of K shots (the shot-fusion hook), training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fss.backbones import ResNet
from fss.models import SGOne
from fss.models.sgone import EPS, masked_average_pooling
from fss.speed import runs_per_shot

SIZE = 64


def small(masking: str = "fm") -> SGOne:
    torch.manual_seed(0)
    return SGOne(ResNet("resnet18", weights=None), masking=masking, hidden=32)


def episode(shots: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(2, 3, SIZE, SIZE, generator=gen)
    supports = torch.randn(2, shots, 3, SIZE, SIZE, generator=gen)
    masks = torch.zeros(2, shots, SIZE, SIZE)
    for b in range(2):
        for k in range(shots):  # a rectangle per support, of random position and size
            y, x = torch.randint(0, SIZE // 2, (2,), generator=gen).tolist()
            h, w = torch.randint(SIZE // 4, SIZE // 2, (2,), generator=gen).tolist()
            masks[b, k, y : y + h, x : x + w] = 1
    return query, supports, masks


def test_masked_average_pooling_by_hand():
    feat = torch.arange(8.0).view(1, 2, 2, 2)  # channel 0: [[0, 1], [2, 3]], channel 1: [[4, 5], [6, 7]]
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # the left column, already at the feature size
    torch.testing.assert_close(
        masked_average_pooling(feat, mask), torch.tensor([[2 / (2 + EPS), 10 / (2 + EPS)]])
    )


def test_uses_the_deepest_two_levels_and_concatenates_them():
    net = small()
    assert net.levels == (3, 4) and net.learner.guide[0].in_channels == 256 + 512


def test_k_shots_are_fused_into_one_prototype():
    net = small().eval()
    query, supports, masks = episode(shots=3)
    with torch.inference_mode():
        maps = net.forward_shots(query, supports, masks)
        assert maps.shape == (2, 1, 2, SIZE, SIZE)
        # the prototype is the mean of the shots' representative vectors
        _, support_feats = net.extract_features(query, supports, masks)
        vectors = [
            masked_average_pooling(
                net.learner.guide(net._features([f[k::3] for f in support_feats])), masks[:, k]
            )
            for k in range(3)
        ]
        prototype = net.learner.prototypes(net._features(support_feats), masks)
        torch.testing.assert_close(prototype, torch.stack(vectors).mean(dim=0))
        # one shot given three times is that shot
        once = net.forward_shots(query, supports[:, :1], masks[:, :1])
        thrice = net.forward_shots(
            query, supports[:, :1].expand(-1, 3, -1, -1, -1), masks[:, :1].expand(-1, 3, -1, -1)
        )
        torch.testing.assert_close(once, thrice)
    # the CPU per-shot path is for per-shot models only
    net.cpu_per_shot_min_pixels = 1
    assert not runs_per_shot(net, query)


def test_trains_end_to_end():
    """A few Adam steps on one 2-shot batch (query: the first support's image) fit it: the loss falls."""
    net = small("hm").train()
    query, supports, masks = episode(shots=2, seed=3)
    target = masks[:, 0].long()  # segment the first support's object in its own image
    query = supports[:, 0]
    optimizer = torch.optim.Adam(net.learner.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(query, supports, masks), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert all(p.grad is None for p in net.backbone.parameters())
