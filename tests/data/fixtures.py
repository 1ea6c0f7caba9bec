"""Seeded builders of tiny datasets in the real on-disk formats (PASCAL VOC, COCO 2014, FSS-1000).

Every builder writes real JPEG/PNG files with PIL (and, for COCO, an ``instances_<set>.json`` that
pycocotools reads, with polygon, compressed-RLE and crowd uncompressed-RLE instances plus the matching
semantic PNGs) into a folder, returns it, and is deterministic for a given seed. Images are 32-64 px.
Also used by ``benchmarks/data_speed.py``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

#: COCO's 80 category ids (ascending = the class order 1..80)
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)  # fmt: skip

FSS1000_NAMES: tuple[str, ...] = (
    "abacus", "bagel", "cactus", "dolphin", "eagle", "fork", "guitar", "hammer", "igloo", "jellyfish",
    "kettle", "lemon",
)  # fmt: skip


def _colour(c: int) -> np.ndarray:
    """A distinctive RGB colour per class id."""
    return np.array([(37 * c + 40) % 256, (91 * c + 90) % 256, (53 * c + 160) % 256], dtype=np.int16)


def _paint(rng: np.random.Generator, label: np.ndarray, palette_offset: int = 0) -> np.ndarray:
    """An RGB image [H, W, 3] uint8: noisy background, each labelled region in its class colour."""
    h, w = label.shape
    img = rng.integers(60, 120, size=(h, w, 3)).astype(np.int16)
    for value in np.unique(label):
        if value in (0, 255):
            continue
        noise = rng.integers(-15, 16, size=(int((label == value).sum()), 3))
        img[label == value] = _colour(int(value) + palette_offset) + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _save_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)


def _save_png(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")  # grey "L" -> palette keeps the indices, as VOC's own PNGs store them
        im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path)


# --------------------------------------------------------------------------------------------- PASCAL
def pascal_image_classes(k: int) -> tuple[int, int]:
    """The two 0-based classes of image ``k``: ``k % 20`` and ``(k + 10) % 20``."""
    return k % 20, (k + 10) % 20


def make_pascal(
    root: Path,
    n_train: int = 40,
    n_val: int = 40,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
    rare_class: int | None = None,
    with_val_txt: bool = True,
) -> Path:
    """Write a tiny PASCAL VOC 2012 (+SBD aug) tree under ``root`` and return ``root``.

    Image ``k`` of each split holds classes ``k % 20`` and ``(k + 10) % 20`` (0-based) as two rectangles
    with a 1-pixel 255 border; with 40 images a class is in exactly 4 images per split. ``rare_class``
    keeps that class in only its first val image. Names: ``2008_00{k:04d}`` (train), ``2007_00{k:04d}``
    (val). Every fifth mask is a palette PNG, the others grey PNGs (both occur in SegmentationClassAug).
    """
    rng = np.random.default_rng(seed)
    voc = root / "VOC2012"
    h, w = size
    names: dict[str, list[str]] = {"train": [], "val": []}
    for split, n, year in (("train", n_train, 2008), ("val", n_val, 2007)):
        seen_rare = False
        for k in range(n):
            name = f"{year}_00{k:04d}"
            label = np.zeros((h, w), dtype=np.uint8)
            for slot, c in enumerate(pascal_image_classes(k)):
                if split == "val" and c == rare_class:
                    if seen_rare:
                        continue
                    seen_rare = True
                y0 = int(rng.integers(2, h // 2 - 8))
                x0 = 2 + slot * (w // 2)
                y1, x1 = y0 + int(rng.integers(8, h // 2)), x0 + int(rng.integers(8, w // 2 - 4))
                label[y0:y1, x0:x1] = 255
                label[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = c + 1
            _save_jpeg(voc / "JPEGImages" / f"{name}.jpg", _paint(rng, label))
            _save_png(voc / "SegmentationClassAug" / f"{name}.png", label, palette=k % 5 == 0)
            names[split].append(name)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("".join(f"{n}\n" for n in names["train"]))
    if with_val_txt:
        (sets / "val.txt").write_text("".join(f"{n}\n" for n in names["val"]))
    return root


# ----------------------------------------------------------------------------------------------- COCO
def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def _compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": list(rle["size"])}


def make_coco(
    root: Path,
    classes: Sequence[int] = (0, 1, 4, 5, 20),
    n_train: int = 15,
    n_val: int = 15,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
    write_json: bool = True,
    write_png: bool = True,
) -> Path:
    """Write a tiny COCO 2014 tree (images, instances JSON, semantic PNGs) under ``root``; return it.

    Image ``k`` holds class ``classes[k % n]`` (a polygon instance in the top-left cell and, for odd ``k``,
    a second one as compressed RLE in the bottom-left cell) and class ``classes[(k + 2) % n]`` (a polygon
    in the top-right cell). Every fourth image also has a crowd region (uncompressed RLE, ``iscrowd: 1``)
    of its first class in the bottom-right cell. Cells do not overlap, so the semantic PNG (value =
    1-based class index, every instance drawn, crowd included) equals the per-class union of the JSON
    instances. With 15 images and 5 classes a class is in 6 images per set.
    """
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    h, w = size
    n = len(classes)
    categories = [
        {"id": cid, "name": f"category_{i + 1}", "supercategory": "thing"}
        for i, cid in enumerate(COCO_CATEGORY_IDS)
    ]
    ann_id = 1
    for images, count, offset in (("train2014", n_train, 100), ("val2014", n_val, 500)):
        data: dict = {"images": [], "annotations": [], "categories": categories}
        for k in range(count):
            image_id = offset + k
            stem = f"COCO_{images}_{image_id:012d}"
            label = np.zeros((h, w), dtype=np.uint8)
            first, second = classes[k % n], classes[(k + 2) % n]
            cells = [(first, 0, 0, "polygon", 0), (second, 0, 1, "polygon", 0)]
            if k % 2:
                cells.append((first, 1, 0, "rle", 0))
            if k % 4 == 0:
                cells.append((first, 1, 1, "crowd", 1))
            for c, row, col, kind, iscrowd in cells:
                cy0, cx0 = row * (h // 2), col * (w // 2)
                y0, x0 = cy0 + int(rng.integers(2, 5)), cx0 + int(rng.integers(2, 5))
                y1, x1 = cy0 + h // 2 - int(rng.integers(2, 5)), cx0 + w // 2 - int(rng.integers(2, 5))
                if kind == "polygon":  # a pentagon inside the cell
                    xm = (x0 + x1) / 2
                    poly = [x0, y0, x1, y0, x1, (y0 + y1) / 2, xm, y1, x0, (y0 + y1) / 2]
                    segm: object = [[float(v) for v in poly]]
                    with warnings.catch_warnings():  # pycocotools predates NumPy 2's copy keyword
                        warnings.simplefilter("ignore", DeprecationWarning)
                        m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segm, h, w)))
                else:
                    m = np.zeros((h, w), dtype=np.uint8)
                    m[y0:y1, x0:x1] = 1
                    m[y0 : (y0 + y1) // 2, x0 : (x0 + x1) // 2] = 0  # an L shape
                    segm = _uncompressed_rle(m) if kind == "crowd" else _compressed_rle(m)
                label[m.astype(bool)] = c + 1
                data["annotations"].append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": COCO_CATEGORY_IDS[c],
                        "segmentation": segm,
                        "area": float(m.sum()),
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                        "iscrowd": iscrowd,
                    }
                )
                ann_id += 1
            data["images"].append({"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w})
            _save_jpeg(root / images / f"{stem}.jpg", _paint(rng, label))
            if write_png:
                _save_png(root / "annotations" / images / f"{stem}.png", label)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        if write_json:
            (root / "annotations" / f"instances_{images}.json").write_text(json.dumps(data))
    return root


# ------------------------------------------------------------------------------------------- FSS-1000
def make_fss1000(
    root: Path,
    n_classes: int = 6,
    n_images: int = 4,
    size: int = 32,
    seed: int = 0,
    png_images: Sequence[str] = (),
    vary_size: bool = False,
) -> Path:
    """Write ``n_classes`` class folders of ``n_images`` images ``<i>.jpg`` + masks ``<i>.png`` (0/255).

    Classes named in ``png_images`` store their images as ``<i>.png`` with masks ``<i>_mask.png`` (the
    own-dataset variant). ``vary_size`` gives every image its own size (own datasets need not be square).
    """
    rng = np.random.default_rng(seed)
    for c, name in enumerate(FSS1000_NAMES[:n_classes]):
        folder = root / name
        for i in range(1, n_images + 1):
            h, w = (size + 4 * i, size + 2 * c) if vary_size else (size, size)
            label = np.zeros((h, w), dtype=np.uint8)
            y0, x0 = int(rng.integers(2, h // 3)), int(rng.integers(2, w // 3))
            label[y0 : y0 + h // 2, x0 : x0 + w // 2] = 1
            img = _paint(rng, label, palette_offset=c)
            if name in png_images:
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(folder / f"{i}.png")
                _save_png(folder / f"{i}_mask.png", label * 255)
            else:
                _save_jpeg(folder / f"{i}.jpg", img)
                _save_png(folder / f"{i}.png", label * 255)
    return root


def write_fss1000_lists(
    split_dir: Path, train: Sequence[str], val: Sequence[str], test: Sequence[str]
) -> Path:
    """Write ``trn.txt``, ``val.txt``, ``test.txt`` class lists into ``split_dir``; return it."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for file, names in (("trn.txt", train), ("val.txt", val), ("test.txt", test)):
        (split_dir / file).write_text("".join(f"{n}\n" for n in names))
    return split_dir


# ------------------------------------------------------------------------------- cross-domain targets
def _blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A bool [h, w] ellipse covering roughly 10-40% of the image, at a random place."""
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.2, 0.35) * h, rng.uniform(0.2, 0.35) * w
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _varied_size(rng: np.random.Generator, k: int) -> tuple[int, int]:
    """(h, w) of image ``k``: varied sizes and aspect ratios, 24-56 px."""
    return int(24 + (k * 7) % 33), int(24 + (k * 13 + int(rng.integers(0, 5))) % 33)


def make_deepglobe(root: Path, n_per_class: tuple[int, ...] = (4, 3, 5, 3, 4, 3), seed: int = 0) -> Path:
    """A prepared Deepglobe tree (``root/Deepglobe/<k>/test/{origin,groundtruth}``); returns ``root``.

    Class folder ``k`` gets ``n_per_class[k-1]`` patches ``<id>_sat_<ij>.jpg`` of varied sizes with a
    binary mask written as OpenCV writes it (3-channel, 0 / 255), and one non-jpg file the loaders skip.
    """
    rng = np.random.default_rng(seed)
    for k, n in enumerate(n_per_class, start=1):
        base = root / "Deepglobe" / str(k) / "test"
        for i in range(n):
            h, w = _varied_size(rng, 10 * k + i)
            fg = _blob_mask(rng, h, w)
            img = _paint(rng, fg.astype(np.int64) * k)
            stem = f"{100 + 7 * i + k}_sat_{i % 6}{(i * 5) % 6}"
            _save_jpeg(base / "origin" / f"{stem}.jpg", img)
            mask = np.repeat((fg * 255).astype(np.uint8)[:, :, None], 3, axis=2)
            (base / "groundtruth").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(base / "groundtruth" / f"{stem}.png")
        (base / "origin" / "Thumbs.db").write_bytes(b"not an image")
    return root


def make_deepglobe_download(src: Path, n_tiles: int = 3, size: int = 60, seed: int = 0) -> Path:
    """An official-style Deepglobe download: ``src/train/<id>_sat.jpg`` + ``<id>_mask.png`` colour masks.

    Each tile's mask is a few rectangles in the official colours with values jittered by up to 20 (the
    real masks are not exactly 0/255); one region is black ("unknown"). Also writes ``metadata.csv``.
    """
    from fss.data.deepglobe import CLASS_COLOURS

    rng = np.random.default_rng(seed)
    folder = src / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(n_tiles):
        colours = np.zeros((size, size, 3), dtype=np.int16)
        colours[:] = CLASS_COLOURS[t % 6]
        for r in range(4):
            y0, x0 = (int(v) for v in rng.integers(0, size - 12, size=2))
            colours[y0 : y0 + int(rng.integers(6, 20)), x0 : x0 + int(rng.integers(6, 20))] = CLASS_COLOURS[
                (t + r + 1) % 6
            ]
        colours[: size // 10, : size // 10] = 0  # unknown
        jitter = rng.integers(-20, 21, size=colours.shape)
        noisy = np.where(colours > 127, np.clip(colours + np.minimum(jitter, 0), 128, 255), np.abs(jitter))
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"{1000 + t}_mask.png")
        _save_jpeg(folder / f"{1000 + t}_sat.jpg", _paint(rng, (colours.sum(axis=2) // 100).astype(np.int64)))
    (src / "metadata.csv").write_text(
        "image_id,split\n" + "".join(f"{1000 + t},train\n" for t in range(n_tiles))
    )
    return src


ISIC_DIAGNOSES: tuple[str, ...] = ("nevus", "melanoma", "seborrheic_keratosis")


def make_isic_download(src: Path, n_images: int = 12, seed: int = 0) -> Path:
    """An ISIC 2018 task 1 download (images, ``_segmentation.png`` masks) plus ``class_id.csv`` (ID,Class).

    Image ``k`` is ``ISIC_<7 digits>``, diagnosis ``ISIC_DIAGNOSES[k % 3]``; the last image has no class.
    """
    rng = np.random.default_rng(seed)
    rows = ["ID,Class"]
    for k in range(n_images):
        name = f"ISIC_{1000 + 3 * k:07d}"
        h, w = _varied_size(rng, k)
        fg = _blob_mask(rng, h, w)
        _save_jpeg(
            src / "ISIC2018_Task1-2_Training_Input" / f"{name}.jpg", _paint(rng, fg.astype(np.int64) * 3)
        )
        _save_png(src / "ISIC2018_Task1_Training_GroundTruth" / f"{name}_segmentation.png", fg * 255)
        if k < n_images - 1:
            rows.append(f"{name},{ISIC_DIAGNOSES[k % 3]}")
    (src / "class_id.csv").write_text("\n".join(rows) + "\n")
    return src


def make_isic(root: Path, n_images: int = 12, seed: int = 0) -> Path:
    """A prepared ISIC tree under ``root/ISIC`` (written by ``prepare_isic`` from a fixture download)."""
    from fss.data.isic import prepare_isic

    src = make_isic_download(root / "download", n_images, seed)
    prepare_isic(src, root)
    return root


def make_lung(root: Path, n_images: int = 6, seed: int = 0, montgomery: int = 1) -> Path:
    """A Chest X-ray tree ``root/LungSegmentation/{CXR_png,masks}``: greyscale radiographs of varied
    sizes with ``<name>_mask.png`` masks (the last ``montgomery`` masks named like their image)."""
    rng = np.random.default_rng(seed)
    base = root / "LungSegmentation"
    (base / "CXR_png").mkdir(parents=True, exist_ok=True)
    for k in range(n_images):
        h, w = _varied_size(rng, k)
        lungs = _blob_mask(rng, h, w)
        grey = np.clip(rng.normal(90, 20, size=(h, w)) + 80 * lungs, 0, 255).astype(np.uint8)
        mont = k >= n_images - montgomery
        name = f"MCUCXR_{k:04d}_0" if mont else f"CHNCXR_{k:04d}_0"
        Image.fromarray(grey, mode="L").save(base / "CXR_png" / f"{name}.png")
        _save_png(base / "masks" / (f"{name}.png" if mont else f"{name}_mask.png"), lungs * 255)
    return root


#: SUIM's 3-bit colour of each class id (R, G, B bits)
def suim_colour(class_id: int) -> tuple[int, int, int]:
    return (255 * ((class_id >> 2) & 1), 255 * ((class_id >> 1) & 1), 255 * (class_id & 1))


def make_suim(root: Path, n_train_val: int = 8, n_test: int = 4, seed: int = 0) -> Path:
    """A SUIM tree ``root/SUIM/{train_val,TEST}/{images,masks}``: JPEG images of varied sizes and RGB
    BMP masks whose colours are jittered (not exactly 0/255). Image ``k`` shows sea-floor (7) as the
    background, class ``1 + k % 6`` as a blob, and a 1-pixel speck of class 4 (below ``min_fraction``)."""
    rng = np.random.default_rng(seed)
    k = 0
    for subset, n in (("train_val", n_train_val), ("TEST", n_test)):
        for _ in range(n):
            h, w = _varied_size(rng, k)
            label = np.full((h, w), 7, dtype=np.int64)
            label[_blob_mask(rng, h, w)] = 1 + k % 6
            label[0, 0] = 4
            rgb = np.array([suim_colour(int(c)) for c in range(8)], dtype=np.int16)[label]
            jitter = rng.integers(0, 30, size=rgb.shape)
            rgb = np.where(rgb > 0, rgb - jitter, jitter).astype(np.uint8)
            name = f"d_r_{100 + k}_"
            _save_jpeg(root / "SUIM" / subset / "images" / f"{name}.jpg", _paint(rng, label))
            (root / "SUIM" / subset / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / "SUIM" / subset / "masks" / f"{name}.bmp")
            k += 1
    return root
