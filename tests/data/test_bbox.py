"""Weak support labels: ``mask_to_bbox`` on hand-made masks and ``support_label: bbox`` in the data modules."""

from __future__ import annotations

import pytest
import torch

from fss.data import SyntheticDataModule, SyntheticFSS
from fss.data.episode import check_episode
from fss.data.transforms import mask_to_bbox


def test_one_blob_becomes_its_box() -> None:
    mask = torch.zeros(6, 8)
    mask[1, 3] = mask[2, 2:5] = mask[3, 4] = 1  # a small plus-like blob
    expected = torch.zeros(6, 8)
    expected[1:4, 2:5] = 1
    assert torch.equal(mask_to_bbox(mask), expected)


def test_several_blobs_give_one_box_covering_all() -> None:
    mask = torch.zeros(10, 12, dtype=torch.long)
    mask[1:3, 1:3] = 1
    mask[7, 9] = 1
    mask[4, 5:7] = 1
    expected = torch.zeros(10, 12, dtype=torch.long)
    expected[1:8, 1:10] = 1
    out = mask_to_bbox(mask)
    assert out.dtype == torch.long and torch.equal(out, expected)


def test_empty_mask_stays_empty_and_ignore_never_counts() -> None:
    assert not mask_to_bbox(torch.zeros(5, 5)).any()
    only_ignore = torch.full((5, 5), 255, dtype=torch.long)
    assert not mask_to_bbox(only_ignore).any()
    target = torch.zeros(7, 7, dtype=torch.long)
    target[0, :] = 255  # an ignore border far from the object must not stretch the box
    target[:, 6] = 255
    target[3:5, 2:4] = 1
    expected = torch.zeros(7, 7, dtype=torch.long)
    expected[3:5, 2:4] = 1
    assert torch.equal(mask_to_bbox(target), expected)


def test_batched_masks_get_one_box_each() -> None:
    masks = torch.zeros(2, 3, 6, 6)
    masks[0, 0, 1, 1] = masks[0, 0, 4, 2] = 1
    masks[1, 2, 5, 5] = 1
    out = mask_to_bbox(masks)
    assert out.shape == masks.shape
    assert out[0, 0].sum() == 4 * 2 and out[0, 0, 1:5, 1:3].all()
    assert out[1, 2].sum() == 1 and out[1, 2, 5, 5] == 1
    assert not out[0, 1:].any() and not out[1, :2].any()  # empty masks stay empty
    assert torch.equal(mask_to_bbox(out), out)  # a box is its own box


def test_mask_to_bbox_rejects_1d() -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W\]"):
        mask_to_bbox(torch.zeros(4))


def test_bbox_data_module_replaces_only_support_masks() -> None:
    """Every split: supports become the boxes of the full masks; query, images and names are unchanged."""
    kwargs = dict(shot=2, img_size=48, batch_size=2, train_episodes=2, val_episodes=2, test_episodes=2)
    full, boxed = SyntheticDataModule(**kwargs), SyntheticDataModule(**kwargs)
    boxed.support_label = "bbox"  # what a subclass forwarding data.support_label sets
    for split in ("train", "val", "test"):
        a, b = next(iter(full.dataloader(split))), next(iter(boxed.dataloader(split)))
        assert torch.equal(b["support_masks"], mask_to_bbox(a["support_masks"]))
        assert not torch.equal(b["support_masks"], a["support_masks"])  # synthetic shapes are no boxes
        assert bool((b["support_masks"] >= a["support_masks"]).all())  # the box covers the mask
        for key in ("query_img", "query_mask", "support_imgs"):
            assert torch.equal(a[key], b[key]), key
    check_episode(boxed.datasets["val"].episode(1), shot=2, img_size=48)


def test_support_label_on_datasets_and_validation() -> None:
    ds = SyntheticFSS("val", shot=1, num_episodes=1, img_size=48)
    assert ds.support_label == "mask"
    ds.support_label = "bbox"
    episode = ds[0]
    assert torch.equal(episode["support_masks"], mask_to_bbox(episode["support_masks"]))
    with pytest.raises(ValueError, match="support_label must be 'mask', 'bbox' or 'tag'"):
        from fss.data.base import EpisodicDataModule

        class Tiny(EpisodicDataModule):
            dataset_class = SyntheticFSS

        Tiny(support_label="boxes")  # type: ignore[arg-type]
