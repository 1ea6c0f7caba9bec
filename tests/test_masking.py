"""Masking strategies on hand-made tensors; every registered strategy has its definition tested here."""

from __future__ import annotations

import pytest
import torch

from fss.masking import MASKINGS, build_masking, feature_masking, input_mask, resize_mask

# one level, 1 support, 1 channel, 2 x 2 features; mask 2 x 2 = feature size (resize is identity)
FEATS = [torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]])]
MASKED = [torch.tensor([[[[10.0, 20.0], [-30.0, 0.0]]]])]
MASK = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
FM = torch.tensor([[[[1.0, -2.0], [0.0, 0.0]]]])

#: the expected output of each registered strategy on FEATS / MASKED / MASK
DEFINITIONS = {
    "fm": FM,
    "im": MASKED[0],
    "hm": torch.tensor([[[[1.0, 20.0], [-30.0, 0.0]]]]),  # FM > 0 ? FM : IM
    "hm_add": torch.tensor([[[[11.0, 18.0], [-30.0, 0.0]]]]),  # FM + IM
    "hm_reverse": torch.tensor([[[[10.0, 20.0], [0.0, 0.0]]]]),  # IM > 0 ? IM : FM
    "none": FEATS[0],  # the features as they are
}


def test_every_registered_strategy_has_its_definition_tested():
    assert set(DEFINITIONS) == set(MASKINGS), "add the expected output of a new strategy to DEFINITIONS"


@pytest.mark.parametrize("name", sorted(MASKINGS))
def test_definitions_with_only_the_passes_the_strategy_declares(name):
    strategy = build_masking(name)
    assert strategy.name == name and isinstance(build_masking(strategy), type(strategy))
    feats = FEATS if strategy.needs_plain else None  # a pass it does not declare is not computed
    masked = MASKED if strategy.needs_masked_input else None
    (out,) = strategy(feats, masked, MASK)
    assert torch.equal(out, DEFINITIONS[name])


def test_feature_masking_resizes_bilinearly_align_corners():
    mask = torch.tensor([[[0.0, 1.0]]])  # 1 x 2 -> 1 x 3: [0, 0.5, 1] with align_corners=True
    (out,) = feature_masking([torch.full((1, 2, 1, 3), 2.0)], mask)
    assert torch.equal(out, torch.tensor([0.0, 1.0, 2.0]).expand(1, 2, 1, 3))
    assert resize_mask(mask, (1, 3)).shape == (1, 1, 1, 3)


def test_input_mask_zeroes_background_in_normalised_space():
    img = torch.randn(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4)
    mask[:, :2] = 1
    out = input_mask(img, mask)
    assert torch.equal(out[:, :, :2], img[:, :, :2]) and torch.all(out[:, :, 2:] == 0)


def test_unknown_name_names_the_option_and_the_choices():
    with pytest.raises(ValueError, match="model.masking") as err:
        build_masking("hmm")
    assert all(name in str(err.value) for name in MASKINGS)
