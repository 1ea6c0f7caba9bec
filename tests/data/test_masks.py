"""Mask files read by meaning: binary, anti-aliased, greyscale/palette class indices, colour; clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fss.data.masks import MaskError, mask_kind, read_mask, read_mask_values

H, W = 40, 50


def _object() -> np.ndarray:
    """bool [40, 50]: a rectangle, the object of every mask below."""
    mask = np.zeros((H, W), bool)
    mask[10:30, 12:40] = True
    return mask


def _voc_border(mask: np.ndarray) -> np.ndarray:
    """The 2-pixel ring just outside ``mask`` (VOC draws its 255 "void" there)."""
    grown = mask.copy()
    for axis in (0, 1):
        for shift in (-2, -1, 1, 2):
            grown |= np.roll(mask, shift, axis=axis)
    return grown & ~mask


def _save(path: Path, values: np.ndarray, mode: str = "L") -> Path:
    img = Image.fromarray(values.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, (i * 7) % 256, (i * 13) % 256)])
    img.save(path)
    return path


def test_binary_masks(tmp_path: Path) -> None:
    obj = _object()
    for name, fg in (("white", 255), ("one", 1)):
        path = _save(tmp_path / f"{name}.png", obj * fg)
        assert mask_kind(*read_mask_values(path)) == "binary"
        assert (read_mask(path) == obj).all()


def test_greyscale_voc_mask_with_class_15_and_void_border(tmp_path: Path) -> None:
    """The issue's case: a 128 threshold took only the 255 border as the object."""
    obj = _object()
    values = obj * 15 + _voc_border(obj) * 255
    path = _save(tmp_path / "voc_grey.png", values)
    assert mask_kind(*read_mask_values(path)) == "classes"
    assert (read_mask(path) == obj).all()
    assert (read_mask(_save(tmp_path / "voc_palette.png", values, "P")) == obj).all()


def test_a_0_2_mask_is_class_2_not_empty(tmp_path: Path) -> None:
    obj = _object()
    assert (read_mask(_save(tmp_path / "two.png", obj * 2)) == obj).all()


def test_anti_aliased_white_on_black_mask_is_thresholded(tmp_path: Path) -> None:
    obj = _object()
    img = Image.fromarray(obj.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(0.8))
    path = tmp_path / "soft.png"
    img.save(path)
    values, palette = read_mask_values(path)
    assert len(np.unique(values)) > 5  # many grey levels on the edges
    assert mask_kind(values, palette) == "soft"
    assert (read_mask(path) == (values >= 128)).all()
    assert abs(int(read_mask(path).sum()) - int(obj.sum())) <= 0.1 * obj.sum()


def test_several_classes_need_a_class_or_give_their_union_with_a_warning(tmp_path: Path) -> None:
    obj = _object()
    other = np.zeros_like(obj)
    other[32:38, 5:20] = True
    path = _save(tmp_path / "two_classes.png", obj * 15 + other * 9)
    with pytest.warns(UserWarning, match=r"two_classes\.png holds several classes \(9, 15\).*support_class"):
        union = read_mask(path)
    assert (union == (obj | other)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (read_mask(path, class_value=15) == obj).all()
    with pytest.raises(MaskError, match=r"two_classes\.png has no pixel of class 3 \(its classes: 9, 15\)"):
        read_mask(path, class_value=3)


def test_colour_masks(tmp_path: Path) -> None:
    obj = _object()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[obj] = (192, 128, 128)  # VOC's colour of class 15, saved as RGB
    rgb[_voc_border(obj)] = (224, 224, 192)  # VOC's void colour
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    assert (read_mask(tmp_path / "colour.png") == obj).all()
    grey_rgb = np.repeat((obj * 255).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "white_rgb.png")
    assert (read_mask(tmp_path / "white_rgb.png") == obj).all()


def test_empty_and_void_only_masks_are_errors(tmp_path: Path) -> None:
    with pytest.raises(MaskError, match=r"empty\.png is empty: it has only background \(0\)\. Paint"):
        read_mask(_save(tmp_path / "empty.png", np.zeros((H, W))))
    void = _voc_border(_object()) * 255
    with pytest.raises(MaskError, match=r"void\.png is empty: it has only background \(0\) and void \(255\)"):
        read_mask(_save(tmp_path / "void.png", void, "P"))
    assert not read_mask_values(tmp_path / "empty.png")[0].any()
    with pytest.raises(MaskError, match=r"missing\.png does not exist"):
        read_mask(tmp_path / "missing.png")
