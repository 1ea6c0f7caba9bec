"""The synthetic cross-domain twin: same scenes and masks as the source, other appearance statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fss.data import SyntheticDataModule, SyntheticFSS, SyntheticShiftDataModule, SyntheticShiftFSS
from fss.data.check import check_datamodule
from fss.data.synthetic_shift import DOMAINS, restyle
from fss.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SIZE = 40


def pixels(image: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: [3, S, S] in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return image * std + mean


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_scenes_and_masks_other_appearance(domain: str) -> None:
    source = SyntheticFSS("test", img_size=SIZE, num_episodes=4)
    shifted = SyntheticShiftFSS("test", domain=domain, img_size=SIZE, num_episodes=4)
    for i in range(4):
        a, b = source.episode(i), shifted.episode(i)
        assert torch.equal(a["query_mask"], b["query_mask"]) and torch.equal(
            a["support_masks"], b["support_masks"]
        )
        assert int(a["class_id"]) == int(b["class_id"]) and int(b["class_id"]) in range(12)  # fold 0
        pa, pb = pixels(a["query_img"]), pixels(b["query_img"])
        if domain == "greyscale":
            assert torch.allclose(pb[0], pb[1], atol=1e-5) and torch.allclose(pb[1], pb[2], atol=1e-5)
        elif domain == "underwater":
            assert pb[0].mean() < 0.5 * pa[0].mean() and pb[1:].mean() > pb[0].mean()
            # absorption and haze scale every channel's contrast by absorb * (1 - haze) < 1
            assert (pb.flatten(1).std(1) < pa.flatten(1).std(1)).all()
        else:
            assert torch.allclose(pb, 1 - pa, atol=1e-5)


def test_restyle_by_hand() -> None:
    rng = np.random.default_rng(0)
    imgs = np.zeros((1, 3, 2, 2), dtype=np.float32)
    imgs[0, 0] = 1.0  # pure red
    restyle(rng, imgs, "negative")
    assert imgs[0, :, 0, 0].tolist() == [0.0, 1.0, 1.0]
    grey = np.full((2, 3, 2, 2), 0.5, dtype=np.float32)
    restyle(np.random.default_rng(0), grey, "greyscale")
    assert np.ptp(grey[0], axis=0).max() == 0
    with pytest.raises(ValueError, match="unknown domain"):
        restyle(rng, imgs, "sepia")


def test_test_only_and_checked() -> None:
    with pytest.raises(ValueError, match="test-only cross-domain target"):
        SyntheticShiftFSS("train")
    dm = SyntheticShiftDataModule(domain="underwater", img_size=SIZE, test_episodes=4)
    assert dm.train_class_ids == [] and dm.eval_class_ids == SyntheticDataModule().eval_class_ids
    report = check_datamodule(dm)
    assert "train" not in report and report.count("test: 12 classes, 4 episodes") == 4
    with pytest.raises(ValueError, match="data.domain"):
        SyntheticShiftDataModule(domain="sepia")


def test_dataloader_output_does_not_depend_on_num_workers() -> None:
    def batches(num_workers: int) -> list[dict]:
        dm = SyntheticShiftDataModule(
            domain="greyscale", img_size=SIZE, test_episodes=6, eval_batch_size=3, num_workers=num_workers
        )
        dm.setup("test")
        return list(dm.test_dataloader())

    a, b = batches(0), batches(2)
    assert all(torch.equal(x["query_img"], y["query_img"]) for x, y in zip(a, b))
