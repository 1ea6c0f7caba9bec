"""The iFSL head: presence, background merging, the K-shot rule and the two losses, by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fss.models.ifsl import (
    aggregate_shots,
    classification_loss,
    merge_ways,
    presence_from_log_probs,
    segmentation_loss,
    upsample,
    way_log_probs,
)


def test_presence_is_a_foreground_probability_of_at_least_one_half_somewhere() -> None:
    logits = torch.zeros(1, 3, 2, 2, 2)
    logits[0, 0, 1, 1, 1] = 0.1  # p_fg > 1/2 at one pixel
    logits[0, 1, 1] = -1.0  # p_fg < 1/2 everywhere
    # way 2: p_fg == 1/2 exactly everywhere: present (>= log 0.5, as the reference)
    log_probs = way_log_probs(logits)
    assert torch.allclose(log_probs.exp().sum(dim=2), torch.ones(1, 3, 2, 2))
    assert presence_from_log_probs(log_probs).tolist() == [[True, False, True]]


def test_merge_ways_averages_the_background_log_probabilities() -> None:
    log_probs = way_log_probs(torch.randn(2, 3, 2, 4, 5, generator=torch.Generator().manual_seed(0)))
    merged = merge_ways(log_probs)
    assert merged.shape == (2, 4, 4, 5)
    assert torch.allclose(merged[:, 0], (log_probs[:, 0, 0] + log_probs[:, 1, 0] + log_probs[:, 2, 0]) / 3)
    assert torch.equal(merged[:, 2], log_probs[:, 1, 1])


def test_kshot_rule_votes_presence_and_averages_log_probabilities() -> None:
    presence = torch.tensor([[[True, False], [False, False], [True, True], [False, True]]])  # B=1, K=4, N=2
    merged = torch.zeros(1, 4, 3, 1, 2)
    merged[0, 0, 1, 0, 0] = 4.0  # one shot says way 0 strongly at pixel 0
    merged[0, 1:, 2, 0, 0] = 1.0  # three shots say way 1 mildly
    merged[0, :, 0, 0, 1] = 1.0  # every shot says background at pixel 1
    cls, seg = aggregate_shots(presence, merged)
    assert cls.tolist() == [[True, True]]  # 2 of 4 votes each: >= 1/2
    assert seg.tolist() == [[[1, 0]]]  # mean 1.0 (way 0) vs 0.75 (way 1) at pixel 0
    cls1, seg1 = aggregate_shots(presence[:, :1], merged[:, :1])
    assert cls1.tolist() == [[True, False]] and seg1.tolist() == [[[1, 0]]]


def test_losses_by_hand() -> None:
    merged = torch.log(torch.tensor([[[[0.5, 0.2]], [[0.25, 0.7]], [[0.25, 0.1]]]]))  # [1, 3, 1, 2]
    target = torch.tensor([[[2, 1]]])
    assert segmentation_loss(merged, target).item() == pytest.approx(-(math.log(0.25) + math.log(0.7)) / 2)
    ignored = torch.tensor([[[255, 1]]])
    assert segmentation_loss(merged, ignored).item() == pytest.approx(-math.log(0.7))
    assert segmentation_loss(merged, torch.full((1, 1, 2), 255)).item() == 0.0
    log_probs = torch.log(
        torch.tensor([[[[[0.9, 0.5]], [[0.1, 0.5]]], [[[0.2, 0.2]], [[0.8, 0.8]]]]])
    )  # [1,2,2,1,2]
    presence = torch.tensor([[False, True]])
    # way 0 absent: mean log p_bg = (log .9 + log .5) / 2; way 1 present: mean log p_fg = log .8
    expected = -((math.log(0.9) + math.log(0.5)) / 2 + math.log(0.8)) / 2
    assert classification_loss(log_probs, presence).item() == pytest.approx(expected)


def test_upsample_matches_interpolate_with_any_leading_dims() -> None:
    maps = torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(1))
    out = upsample(maps, (9, 11))
    ref = F.interpolate(maps.flatten(0, 1), (9, 11), mode="bilinear", align_corners=True).view(2, 3, 4, 9, 11)
    assert torch.equal(out, ref)
    assert upsample(maps, (5, 6)) is maps
