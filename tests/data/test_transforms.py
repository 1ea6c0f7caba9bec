"""Images and masks reach the model exactly as the reference loaders make them.

The references' pipelines are rebuilt here from the public library calls their loaders make
(HSNet, ASNet and HM: torchvision ``Resize`` on the PIL image, ``ToTensor``, ``Normalize`` and
``F.interpolate(mode="nearest")`` for masks; VAT: albumentations ``Resize``, ``Normalize``,
``ToTensorV2``), and fss's tensors must equal theirs bit for bit. The same comparison against the
reference loaders themselves, run on the fixtures of ``tests/data/fixtures.py``, gave 0 differing
elements for all three benchmarks at 64, 400 and 473 px (see ``docs/datasets.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from fss.data.pascal import Pascal5iDataset
from fss.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_episode,
    check_resize,
    image_tensor,
    resize_label,
)
from tests.data.fixtures import make_pascal


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish uint8 RGB image (gradients plus noise, so resizing has something to round)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)


def torchvision_pipeline(img: np.ndarray, size: int) -> torch.Tensor:
    """HSNet's ``FSSDataset.transform`` on the PIL image."""
    transform = T.Compose(
        [T.Resize(size=(size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    return transform(Image.fromarray(img))


def albumentations_pipeline(img: np.ndarray, size: int) -> torch.Tensor:
    """VAT's test transform."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    transform = A.Compose([A.Resize(size, size), A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()])
    return transform(image=img)["image"]


@pytest.mark.parametrize(("h", "w", "size"), [(375, 500, 400), (90, 110, 400), (333, 241, 64), (64, 64, 64)])
def test_pil_images_equal_torchvision_resize_totensor_normalize(h: int, w: int, size: int) -> None:
    img = random_image(h, w)
    assert torch.equal(image_tensor(img, size, "pil"), torchvision_pipeline(img, size))
    # a PIL image and a grey image take the same path (grey is repeated into 3 channels, as PIL's RGB)
    assert torch.equal(image_tensor(Image.fromarray(img), size), torchvision_pipeline(img, size))
    grey = img[:, :, 0]
    expected = torchvision_pipeline(np.asarray(Image.fromarray(grey).convert("RGB")), size)
    assert torch.equal(image_tensor(grey, size), expected)


@pytest.mark.parametrize(("h", "w", "size"), [(375, 500, 473), (90, 110, 417), (333, 241, 64)])
def test_opencv_images_equal_albumentations_resize_normalize(h: int, w: int, size: int) -> None:
    img = random_image(h, w, seed=1)
    assert torch.equal(image_tensor(img, size, "opencv"), albumentations_pipeline(img, size))


def test_the_two_pipelines_differ_and_the_old_antialiased_float_resize_too() -> None:
    """The choice matters: the pipelines give different tensors for the same image."""
    img = random_image(375, 500)
    pil, cv = image_tensor(img, 400, "pil"), image_tensor(img, 400, "opencv")
    assert not torch.equal(pil, cv)
    as_float = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    antialiased = F.interpolate(as_float[None], (400, 400), mode="bilinear", antialias=True)[0]
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    levels = ((pil * std + mean) - antialiased).abs() * 255  # in uint8 levels
    assert 0 < float(levels.max()) <= 1.01  # what fss did before: off by up to one level


def test_mask_resizing_follows_each_reference() -> None:
    rng = np.random.default_rng(0)
    label = torch.from_numpy(rng.integers(0, 4, size=(90, 110)).astype(np.int64))
    label[0, 0] = 255
    expected_pil = F.interpolate(label[None, None].float(), (400, 400), mode="nearest")[0, 0].long()
    assert torch.equal(resize_label(label, 400, "pil"), expected_pil)
    import cv2

    expected_cv = cv2.resize(label.numpy().astype(np.uint8), (400, 400), interpolation=cv2.INTER_NEAREST)
    out = resize_label(label, 400, "opencv")
    assert out.dtype == torch.long and torch.equal(out, torch.from_numpy(expected_cv).long())
    assert not torch.equal(expected_pil, out)  # they pick different source rows/columns at 90 -> 400


def test_check_resize_names_the_owner_and_the_choices() -> None:
    check_resize("pil", "x")
    with pytest.raises(ValueError, match=r"PascalDataModule.*'pil'.*'opencv'.*'bilinear'"):
        check_resize("bilinear", "PascalDataModule")


def test_a_mask_of_another_size_is_resized_straight_to_img_size() -> None:
    """As the references: no detour through the image's size (two nearest resizes are not one)."""
    img = random_image(90, 110)
    small = torch.zeros(45, 55, dtype=torch.long)
    small[10:30, 5:40] = 1
    episode = build_episode(img, small, [img], [small], 0, 64, "q", ["s"], keep_original_mask=True)
    direct = F.interpolate(small[None, None].float(), (64, 64), mode="nearest")[0, 0].long()
    assert torch.equal(episode["query_mask"], direct)
    assert torch.equal(episode["support_masks"][0], direct.float())
    # the original-size mask (scored with use_original_imgsize) is the image's size
    assert episode["org_query_mask"].shape == (90, 110)
    assert episode["org_query_imsize"].tolist() == [90, 110]


def test_dataset_episodes_equal_the_reference_pipeline_on_the_files(tmp_path: Path) -> None:
    root = make_pascal(tmp_path, n_train=4, n_val=20, size=(90, 110))
    for resize in ("pil", "opencv"):
        ds = Pascal5iDataset(root, "test", num_episodes=3, img_size=64)
        ds.resize = resize
        episode = ds.episode(1)
        voc = root / "VOC2012"
        img = np.asarray(Image.open(voc / "JPEGImages" / f"{episode['query_name']}.jpg"))
        label = torch.from_numpy(
            np.array(Image.open(voc / "SegmentationClassAug" / f"{episode['query_name']}.png"))
        )
        pipeline = torchvision_pipeline if resize == "pil" else albumentations_pipeline
        assert torch.equal(episode["query_img"], pipeline(img, 64))
        target = resize_label(label.long(), 64, resize)
        c = int(episode["class_id"]) + 1
        expected = torch.where(target == 255, 255, (target == c).long())
        assert torch.equal(episode["query_mask"], expected)
