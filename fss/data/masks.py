"""Reading a mask file by what it means: which pixels are the object.

Masks come in several conventions, and a threshold cannot tell them apart (a VOC-style greyscale
mask with class 15 and a 255 "void" border would give only its border as the object under a 128
threshold; a 0/2 mask would be empty). :func:`mask_foreground` decides from the values and their
layout:

========================  ==================================================  ========================
kind                      values                                              foreground
========================  ==================================================  ========================
binary                    {0, 255} or {0, 1} (or a single one of them)        the non-zero pixels
soft binary               0 and 255 plus intermediate values on thin edges    pixels >= 128
                          (anti-aliased or resized masks, JPEG noise)
class indices             a few values, as regions: VOC / COCO / palette      ``class_value`` if given,
                          PNGs; 255 is "void" (never the object)              else the only class; with
                                                                              several: all (a warning)
========================  ==================================================  ========================

A palette (``P``) PNG is always class indices. Soft edges are told from class regions by their
values and layout: an anti-aliased mask is mostly white with many intermediate levels lying on edges
(almost none has four equal neighbours); a class-index mask has a few values forming regions. Anything else raises :class:`MaskError`
naming the file and what to do: an empty mask, a colour mask with several colours, ``class_value``
absent from the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: the "void" / ignore label of VOC-style class-index masks
VOID = 255
#: soft edges: at least this many intermediate levels, white (255) the commonest non-zero value, and
#: fewer than this fraction of the intermediate pixels with four equal neighbours (they lie on edges)
SOFT_MIN_LEVELS = 3
EDGE_INTERIOR_FRACTION = 0.25


class MaskError(ValueError):
    """A mask file whose object pixels cannot be determined (the message names the file and the fix)."""


def read_mask_values(path: str | Path) -> tuple[np.ndarray, bool]:
    """The label values of a mask file [H, W] and whether they are palette indices.

    Greyscale, 16-bit and palette PNGs give their values; an RGB(A) image whose channels are equal is
    greyscale; a colour image is mapped to indices 0 (black), 255 (VOC's void colour (224, 224, 192)) and
    1, 2, ... for its other colours (a palette). EXIF orientation is applied.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise MaskError(f"mask {path} does not exist: check the path") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MaskError(f"cannot read mask {path} ({err}): give a PNG mask") from None
    if img.mode == "P":
        return np.asarray(img), True
    if img.mode in ("L", "I", "I;16", "1"):
        values = np.asarray(img)
        return (values.astype(np.uint8) if img.mode == "1" else values), False
    rgb = np.asarray(img.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0], False
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    index = np.zeros(len(colours), dtype=np.int64)
    others = 0
    for i, colour in enumerate(colours):
        if tuple(colour) == (0, 0, 0):
            index[i] = 0
        elif tuple(colour) == (224, 224, 192):
            index[i] = VOID
        else:
            others += 1
            index[i] = others
    if others > 254:
        raise MaskError(
            f"mask {path} is a colour image with {others} colours, not a mask: save the object in white on black"
        )
    return index[inverse.reshape(-1)].reshape(rgb.shape[:2]), True


def _interior_fraction(values: np.ndarray, selected: np.ndarray) -> float:
    """Fraction of the ``selected`` pixels whose four neighbours hold the same value."""
    padded = np.pad(values, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    same = (
        (padded[:-2, 1:-1] == centre)
        & (padded[2:, 1:-1] == centre)
        & (padded[1:-1, :-2] == centre)
        & (padded[1:-1, 2:] == centre)
    )
    count = int(selected.sum())
    return float((same & selected).sum()) / count if count else 0.0


def mask_kind(values: np.ndarray, palette: bool) -> str:
    """``binary``, ``soft`` or ``classes`` (see the module docstring)."""
    present = np.unique(values)
    nonzero = set(present.tolist()) - {0}
    if not palette and (nonzero <= {255} or nonzero <= {1}):
        return "binary"
    if palette:
        return "classes"
    intermediate = (values != 0) & (values != 255)
    levels = len(nonzero - {255})
    white = int((values == 255).sum())
    if (
        levels >= SOFT_MIN_LEVELS
        and white > int(intermediate.sum())
        and _interior_fraction(values, intermediate) < EDGE_INTERIOR_FRACTION
    ):
        return "soft"
    return "classes"


def mask_foreground(
    values: np.ndarray,
    palette: bool,
    path: str | Path,
    class_value: int | None = None,
    allow_empty: bool = False,
) -> np.ndarray:
    """bool [H, W]: the object pixels of a mask's label values (see the module docstring).

    Args:
        values: [H, W] label values (:func:`read_mask_values`).
        palette: whether they are palette indices (always class indices).
        path: the file, for messages.
        class_value: the label value of the object in class-index masks; ``None``: the only class
            present, or every class (with a warning) when there are several.
        allow_empty: return an all-False mask instead of raising for a mask without object pixels
            (datasets: the references read such masks as empty; ``fss data check`` reports them).

    Raises:
        MaskError: the mask has no object pixel (unless ``allow_empty``), or ``class_value`` is not in it.
    """
    kind = mask_kind(values, palette)
    if kind == "binary":
        foreground = values != 0
    elif kind == "soft":
        foreground = values >= 128
    else:
        classes = sorted(set(np.unique(values).tolist()) - {0, VOID})
        if class_value is not None:
            if class_value not in classes:
                raise MaskError(
                    f"mask {path} has no pixel of class {class_value} (its classes: "
                    f"{', '.join(map(str, classes)) or 'none'}): set the class of the object (support_class) "
                    "or fix the mask"
                )
            foreground = values == class_value
        else:
            if len(classes) > 1:
                warnings.warn(
                    f"mask {path} holds several classes ({', '.join(map(str, classes))}): all are taken as "
                    "the object; set data.init_args.support_class to pick one",
                    stacklevel=2,
                )
            foreground = (values != 0) & (values != VOID)
    if not foreground.any() and not allow_empty:
        void = " and void (255)" if kind == "classes" and (values == VOID).any() else ""
        raise MaskError(
            f"mask {path} is empty: it has only background (0){void}. Paint the object in white (or a class "
            "index) on black, or remove this image"
        )
    return foreground


def read_mask(path: str | Path, class_value: int | None = None) -> np.ndarray:
    """A mask file as bool [H, W] of object pixels (:func:`read_mask_values` + :func:`mask_foreground`)."""
    values, palette = read_mask_values(path)
    return mask_foreground(values, palette, path, class_value)
