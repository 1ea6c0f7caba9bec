"""A procedural few-shot segmentation benchmark: no files, any image size, fast to render.

48 object classes, each a pair (shape, pattern) of 8 shapes x 6 patterns:

* shapes: circle, square, triangle, star, ring, cross, ellipse, crescent;
* patterns (colour and texture statistics): ``solid`` red, ``stripes`` blue/cream, ``checker``
  green/black, ``noise`` speckled orange, ``dots`` purple with white dots, ``gradient`` cyan to pink;
* every class also has its own range of object sizes (one of three).

A scene is a cluttered background (a two-colour gradient, low-frequency colour noise, soft blobs
and pixel noise) with one or two instances of the episode's class and ``min_distractors`` to
``max_distractors`` objects of *other* classes (drawn from all 47 others, as real images contain
objects of any class), painted in random order so objects may occlude each other (an occluded
target instance that keeps less than 40% of its area is repainted on top). Every object gets a
random position, size (within its class's range), rotation, aspect jitter and colour jitter, and
its texture follows the object's own frame. The query and the K supports are independent scenes
showing the same class; masks are 1 on the visible pixels of the class's instances, 0 elsewhere
(distractors included). Distractors often share the pattern or the shape of the target, so a model
has to read the support to tell which object is meant.

Folds: 4 class-disjoint folds of 12 classes, fold ``i`` = class ids ``12i .. 12i+11`` as in
PASCAL-5i; the classes are ordered so that fold ``i`` holds the pairs with
``(shape + pattern) % 4 == i``, so each fold mixes all patterns and all shapes and a held-out class
is an unseen combination of seen attributes. Val/test use fold ``fold``, training the other three.

Episode ``index`` shows class ``class_ids[index % len(class_ids)]`` (balanced), everything else is
drawn from the episode generator, so episodes are a pure function of (seed, split, fold, epoch,
index) and identical whatever the number of workers.

GFSS test episodes (``data.gfss``, :mod:`fss.data.gfss`): the query is a scene around class
``index % 48`` (so it shows base and novel classes), its labels keep the 36 training classes (base)
and the novel class chosen by BAM's rule; the supports are scenes of that novel class.

FS-CS episodes (``data.fscs``, :mod:`fss.data.fscs`): the query is the scene of class
``class_ids[index % len(class_ids)]``; the N support classes are drawn from the split's classes as the
iFSL reference does (that class with probability 1/2), so the query shows a support class when it is
"its" class or when a distractor happens to be one.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fss.data.base import EpisodicDataModule, EpisodicDataset
from fss.data.episode import Episode
from fss.data.fscs import FSCSEpisode, class_presence, draw_support_classes
from fss.data.gfss import add_gfss_targets, choose_novel_class, gfss_label, image_classes_of, novel_target
from fss.data.transforms import normalize_array_

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "crescent")
PATTERNS: tuple[str, ...] = ("solid", "stripes", "checker", "noise", "dots", "gradient")
#: (hue in degrees, saturation, value) of each pattern's first and second colour
PATTERN_COLOURS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "solid": ((0.0, 0.85, 0.85), (0.0, 0.85, 0.85)),
    "stripes": ((220.0, 0.85, 0.8), (50.0, 0.35, 0.95)),
    "checker": ((125.0, 0.8, 0.75), (125.0, 0.5, 0.15)),
    "noise": ((30.0, 0.9, 0.9), (30.0, 0.9, 0.45)),
    "dots": ((285.0, 0.7, 0.7), (0.0, 0.0, 1.0)),
    "gradient": ((180.0, 0.8, 0.85), (330.0, 0.7, 0.9)),
}
#: object radius as a fraction of the image side, per size group
SIZE_RANGES: tuple[tuple[float, float], ...] = ((0.10, 0.16), (0.13, 0.21), (0.17, 0.26))
NUM_FOLDS = 4


def _class_table() -> list[tuple[int, int]]:
    """(shape, pattern) of each class id: fold blocks of 12, fold i = pairs with (s + p) % 4 == i."""
    table: list[tuple[int, int]] = []
    for fold in range(NUM_FOLDS):
        table += [
            (s, p) for p in range(len(PATTERNS)) for s in range(len(SHAPES)) if (s + p) % NUM_FOLDS == fold
        ]
    return table


CLASS_TABLE: tuple[tuple[int, int], ...] = tuple(_class_table())
CLASS_NAMES: tuple[str, ...] = tuple(f"{PATTERNS[p]}_{SHAPES[s]}" for s, p in CLASS_TABLE)
CLASS_SIZES: tuple[tuple[float, float], ...] = tuple(SIZE_RANGES[(s + 2 * p) % 3] for s, p in CLASS_TABLE)


# ---------------------------------------------------------------------------------------- shapes
def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of ``shape`` in its own frame (unit circumradius); ``u``, ``v`` broadcastable arrays."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if shape == "triangle":  # equilateral, circumradius 1, apex up
        return (v >= -0.5) & (np.sqrt(3.0) * u - v <= 1.0) & (-np.sqrt(3.0) * u - v <= 1.0)
    if shape == "star":  # five points, inner radius 0.42
        t = (np.arctan2(u, v) * np.float32(5.0 / (2.0 * np.pi))) % 1.0
        return u * u + v * v <= (0.42 + 0.58 * np.abs(1.0 - 2.0 * t)) ** 2
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.92)) | ((av <= 0.3) & (au <= 0.92))
    if shape == "ellipse":
        return u * u + (v / 0.5) ** 2 <= 1.0
    if shape == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v >= 0.6)
    raise ValueError(f"unknown shape {shape!r}")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour float32 [3, 1, 1] from hue (degrees), saturation and value."""
    rgb = colorsys.hsv_to_rgb((h / 360.0) % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.asarray(rgb, dtype=np.float32).reshape(3, 1, 1)


def _jitter(rng: np.random.Generator, hsv: tuple[float, float, float]) -> np.ndarray:
    h, s, v = hsv
    return _hsv(h + rng.uniform(-10.0, 10.0), s * rng.uniform(0.85, 1.1), v * rng.uniform(0.85, 1.1))


def pattern_texture(pattern: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colours float32 [3, h, w] of ``pattern`` at object-frame coordinates ``u``, ``v`` ([h, w] each)."""
    hsv_a, hsv_b = PATTERN_COLOURS[pattern]
    a, b = _jitter(rng, hsv_a), _jitter(rng, hsv_b)
    period = np.float32(rng.uniform(0.3, 0.45))
    if pattern == "solid":
        t = None
    elif pattern == "stripes":
        t = (u / period) % 1.0 >= 0.5
    elif pattern == "checker":
        t = (np.floor(u / period) + np.floor(v / period)) % 2.0
    elif pattern == "noise":
        t = rng.random(u.shape, dtype=np.float32)
    elif pattern == "dots":
        du, dv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        t = du * du + dv * dv <= 0.08
    elif pattern == "gradient":
        t = np.clip((u + 1.0) * 0.5, 0.0, 1.0)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    gu, gv = rng.uniform(-0.12, 0.12, size=2).astype(np.float32)
    shade = 1.0 + u * gu + v * gv  # a little lighting, [h, w]
    if t is None:
        return a * shade
    return (a + t.astype(np.float32) * (b - a)) * shade


# ---------------------------------------------------------------------------------------- scenes
def _lerp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Left grid index [n_out] and weight of the right neighbour [n_out] of linear (align-corners) upsampling."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    return lo, (pos - lo).astype(np.float32)


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered background, float32 [3, size, size] in about [0, 1].

    A two-colour linear gradient plus low-frequency colour noise (both as one coarse grid, upsampled
    bilinearly, which reproduces the gradient exactly), soft blobs and pixel grain.
    """
    g = int(rng.integers(3, 7))
    c0 = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.85))
    c1 = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.85))
    angle = rng.uniform(0, 2 * np.pi)
    coords = np.linspace(0.0, 1.0, g, dtype=np.float32)
    t = (coords[None, :] * np.cos(angle) + coords[:, None] * np.sin(angle)) * 0.5 + 0.5  # [g, g]
    grid = (c0 + t[None] * (c1 - c0) + rng.normal(0.0, 0.08, size=(3, g, g))).astype(np.float32)
    lo, w = _lerp_weights(size, g)
    rows = grid[:, lo, :] * (1.0 - w)[None, :, None] + grid[:, lo + 1, :] * w[None, :, None]  # [3, S, g]
    counts = np.bincount(lo, minlength=g - 1)  # lo is sorted: gathering is repeating (and fast)
    img = np.repeat(rows[:, :, :-1], counts, axis=2)  # rows[:, :, lo], C-contiguous [3, S, S]
    img *= 1.0 - w
    right = np.repeat(rows[:, :, 1:], counts, axis=2)  # rows[:, :, lo + 1]
    right *= w
    img += right
    for _ in range(int(rng.integers(2, 5))):  # soft blobs
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.9))
        r = rng.uniform(0.06, 0.22) * size
        stretch = rng.uniform(0.5, 1.5)
        cy, cx = rng.uniform(0, size, size=2).tolist()
        y0, y1 = max(int(cy - 1.6 * r), 0), min(int(cy + 1.6 * r) + 1, size)
        x0, x1 = max(int(cx - 1.6 * r * stretch), 0), min(int(cx + 1.6 * r * stretch) + 1, size)
        if y1 <= y0 or x1 <= x0:
            continue
        yy = ((np.arange(y0, y1, dtype=np.float32) - cy) / r)[:, None]
        xx = ((np.arange(x0, x1, dtype=np.float32) - cx) / (r * stretch))[None, :]
        alpha = np.float32(rng.uniform(0.25, 0.6)) * np.exp(-(xx * xx + yy * yy) * 1.5)
        patch = img[:, y0:y1, x0:x1]
        patch += alpha * (colour - patch)
    grain = rng.random((1, size, size), dtype=np.float32)
    grain -= 0.5
    grain *= 0.08
    img += grain
    return img


@dataclass
class _Object:
    class_id: int
    cy: float
    cx: float
    radius: float


def _place_objects(rng: np.random.Generator, size: int, class_ids: list[int]) -> list[_Object]:
    """Positions and radii, trying to keep objects from piling onto each other."""
    objects: list[_Object] = []
    for c in class_ids:
        lo, hi = CLASS_SIZES[c]
        r = rng.uniform(lo, hi) * size
        margin = min(r * 1.1, size / 2 - 1)
        for _ in range(12):
            cy, cx = rng.uniform(margin, size - margin, size=2)
            if all(np.hypot(cy - o.cy, cx - o.cx) >= 0.75 * (r + o.radius) for o in objects):
                break
        objects.append(_Object(c, float(cy), float(cx), float(r)))
    return objects


def _render_object(
    rng: np.random.Generator, size: int, obj: _Object
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Render ``obj``: its bounding box, inside mask bool [h, w] and colours float32 [3, h, w]."""
    shape_i, pattern_i = CLASS_TABLE[obj.class_id]
    theta = rng.uniform(0, 2 * np.pi)
    aspect = np.float32(rng.uniform(0.88, 1.12))
    extent = obj.radius * 1.15
    y0, y1 = max(int(obj.cy - extent), 0), min(int(np.ceil(obj.cy + extent)) + 1, size)
    x0, x1 = max(int(obj.cx - extent), 0), min(int(np.ceil(obj.cx + extent)) + 1, size)
    dy = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - obj.cy) / obj.radius)[:, None]
    dx = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - obj.cx) / obj.radius)[None, :]
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = (cos * dx + sin * dy) * aspect
    v = (cos * dy - sin * dx) / aspect
    inside = shape_mask(SHAPES[shape_i], u, v)
    colours = pattern_texture(PATTERNS[pattern_i], u, v, rng)
    return (slice(y0, y1), slice(x0, x1)), inside, colours


def render_scene(
    rng: np.random.Generator,
    size: int,
    target: int,
    min_distractors: int = 1,
    max_distractors: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """One image with one or two instances of class ``target`` and distractors of other classes.

    Returns:
        the image float32 [3, size, size] in [0, 1] and the class map int16 [size, size]: the class id
        of the visible object at each pixel, -1 on the background (the target mask is
        ``class_map == target``).
    """
    img = render_background(rng, size)
    n_target = 2 if rng.random() < 0.2 else 1
    n_distractors = int(rng.integers(min_distractors, max_distractors + 1))
    others = rng.integers(0, len(CLASS_TABLE) - 1, size=n_distractors)
    others = others + (others >= target)  # any class but the target
    objects = _place_objects(rng, size, [target] * n_target + [int(c) for c in others])
    label = np.full((size, size), -1, dtype=np.int8)
    rendered = []
    for i in rng.permutation(len(objects)):
        box, inside, colours = _render_object(rng, size, objects[i])
        np.copyto(img[:, box[0], box[1]], colours, where=inside)
        label[box][inside] = i
        rendered.append((int(i), box, inside, colours))
    for i, box, inside, colours in rendered:  # repaint heavily occluded target instances on top
        if i < n_target and np.count_nonzero(label[box][inside] == i) < 0.4 * np.count_nonzero(inside):
            np.copyto(img[:, box[0], box[1]], colours, where=inside)
            label[box][inside] = i
    np.clip(img, 0.0, 1.0, out=img)
    class_of = np.array([o.class_id for o in objects] + [-1], dtype=np.int16)  # label -1 -> the last
    return img, class_of[label]


# ---------------------------------------------------------------------------------------- dataset
class SyntheticFSS(EpisodicDataset):
    """The procedural episodic dataset (see the module docstring).

    Args:
        split, fold, shot, num_episodes, seed, img_size, use_original_imgsize: see
            :class:`~fss.data.base.EpisodicDataset` (``num_episodes=None`` means 1000).
        min_distractors, max_distractors: range of the number of other-class objects per image.
    """

    num_classes: ClassVar[int] = len(CLASS_TABLE)
    class_names: ClassVar[tuple[str, ...]] = CLASS_NAMES
    num_folds: ClassVar[int] = NUM_FOLDS

    def __init__(
        self,
        split: str,
        fold: int = 0,
        shot: int = 1,
        num_episodes: int | None = 1000,
        seed: int = 0,
        img_size: int = 128,
        use_original_imgsize: bool = False,
        min_distractors: int = 1,
        max_distractors: int = 3,
    ) -> None:
        super().__init__(split, fold, shot, num_episodes, seed, img_size, use_original_imgsize)
        if img_size < 32:
            raise ValueError(
                f"SyntheticFSS: img_size must be at least 32 (objects vanish below), got {img_size}"
            )
        if not 0 <= min_distractors <= max_distractors:
            raise ValueError(
                f"SyntheticFSS: need 0 <= min_distractors <= max_distractors, got {min_distractors}, "
                f"{max_distractors}"
            )
        self.min_distractors = min_distractors
        self.max_distractors = max_distractors

    def default_num_episodes(self) -> int:
        return 2000 if self.split == "train" else 1000

    def restyle(self, rng: np.random.Generator, imgs: np.ndarray) -> None:
        """Change the appearance of the rendered images float32 [K+1, 3, S, S] in [0, 1] in place.

        Nothing here; the cross-domain twin (:mod:`fss.data.synthetic_shift`) overrides it.
        """

    def make_episode(self, rng: np.random.Generator, index: int) -> Episode:
        class_id = self.class_ids[index % len(self.class_ids)]
        size = self.img_size
        imgs = np.empty((self.shot + 1, 3, size, size), dtype=np.float32)
        masks = np.empty((self.shot + 1, size, size), dtype=bool)
        for k in range(self.shot + 1):  # 0: the query, then the supports
            img, class_map = render_scene(rng, size, class_id, self.min_distractors, self.max_distractors)
            imgs[k] = img
            np.equal(class_map, class_id, out=masks[k])
            if k == 0:
                query_classes = torch.from_numpy(class_map.astype(np.int64) + 1)  # background -1 -> 0
        self.restyle(rng, imgs)
        normalize_array_(imgs)
        name = f"synthetic/{self.split}/fold{self.fold}/{index:06d}"
        query_mask = torch.from_numpy(masks[0].astype(np.int64))
        episode: Episode = {
            "query_img": torch.from_numpy(imgs[0]),
            "query_mask": query_mask,
            "support_imgs": torch.from_numpy(imgs[1:]),
            "support_masks": torch.from_numpy(masks[1:].astype(np.float32)),
            "class_id": torch.tensor(class_id, dtype=torch.long),
            "query_name": f"{name}/query",
            "support_names": [f"{name}/support{k}" for k in range(self.shot)],
            "org_query_imsize": torch.tensor([size, size], dtype=torch.long),
        }
        if self.use_original_imgsize:
            episode["org_query_mask"] = query_mask.clone()
        if self.class_maps:
            episode["query_classes"] = query_classes
        return episode

    def make_fscs_episode(self, rng: np.random.Generator, index: int) -> FSCSEpisode:
        """The ``way``-way FS-CS episode ``index``: the query shows class ``class_ids[index % n]``
        (plus distractors of any class, which may include other support classes); the support
        classes are drawn as the iFSL reference does (:func:`fss.data.fscs.draw_support_classes`)."""
        query_class = self.class_ids[index % len(self.class_ids)]
        classes = draw_support_classes(rng, self.class_ids, query_class, self.way)
        size, way, shot = self.img_size, self.way, self.shot
        imgs = np.empty((1 + way * shot, 3, size, size), dtype=np.float32)
        img, class_map = render_scene(rng, size, query_class, self.min_distractors, self.max_distractors)
        imgs[0] = img
        target = np.zeros((size, size), dtype=np.int64)
        for n in reversed(range(way)):
            target[class_map == classes[n]] = n + 1
        masks = np.empty((way * shot, size, size), dtype=np.float32)
        for i in range(way * shot):  # way-major: way 0's shots, then way 1's, ...
            c = classes[i // shot]
            img, class_map = render_scene(rng, size, c, self.min_distractors, self.max_distractors)
            imgs[1 + i] = img
            np.equal(class_map, c, out=masks[i], casting="unsafe")
        normalize_array_(imgs)
        name = f"synthetic/{self.split}/fold{self.fold}/{way}way/{index:06d}"
        query_mask = torch.from_numpy(target)
        episode: FSCSEpisode = {
            "query_img": torch.from_numpy(imgs[0]),
            "query_mask": query_mask,
            "support_imgs": torch.from_numpy(imgs[1:]).view(way, shot, 3, size, size),
            "support_masks": torch.from_numpy(masks).view(way, shot, size, size),
            "support_classes": torch.tensor(classes, dtype=torch.long),
            "query_class_presence": torch.tensor(class_presence(target, way), dtype=torch.bool),
            "query_name": f"{name}/query",
            "support_names": [[f"{name}/way{n}/support{k}" for k in range(shot)] for n in range(way)],
            "org_query_imsize": torch.tensor([size, size], dtype=torch.long),
        }
        if self.use_original_imgsize:
            episode["org_query_mask"] = query_mask.clone()
        return episode

    def make_gfss_episode(self, rng: np.random.Generator, index: int) -> Episode:
        """The GFSS test episode ``index`` (:mod:`fss.data.gfss`): the query is a scene around class
        ``index % 48`` (base or novel) with its distractors; the novel class is chosen from what the
        scene shows by the reference's rule; the K supports are scenes of that class."""
        size, shot, base_ids = self.img_size, self.shot, self.gfss_base_ids
        imgs = np.empty((shot + 1, 3, size, size), dtype=np.float32)
        masks = np.empty((shot, size, size), dtype=np.float32)
        imgs[0], query_map = render_scene(
            rng, size, index % self.num_classes, self.min_distractors, self.max_distractors
        )
        class_map = (query_map + 1).astype(np.uint8)  # background -1 -> 0, class c -> c + 1
        novel = choose_novel_class(rng, image_classes_of(class_map), base_ids, self.gfss_novel_ids)
        for k in range(shot):
            imgs[1 + k], support_map = render_scene(
                rng, size, novel, self.min_distractors, self.max_distractors
            )
            np.equal(support_map, novel, out=masks[k], casting="unsafe")
        self.restyle(rng, imgs)
        normalize_array_(imgs)
        label = gfss_label(class_map, base_ids, novel)
        query_mask = torch.from_numpy(novel_target(label, len(base_ids) + 1).astype(np.int64))
        name = f"synthetic/{self.split}/fold{self.fold}/gfss/{index:06d}"
        episode: Episode = {
            "query_img": torch.from_numpy(imgs[0]),
            "query_mask": query_mask,
            "support_imgs": torch.from_numpy(imgs[1:]),
            "support_masks": torch.from_numpy(masks),
            "class_id": torch.tensor(novel, dtype=torch.long),
            "query_name": f"{name}/query",
            "support_names": [f"{name}/support{k}" for k in range(shot)],
            "org_query_imsize": torch.tensor([size, size], dtype=torch.long),
        }
        if self.use_original_imgsize:
            episode["org_query_mask"] = query_mask.clone()
        if self.class_maps:
            episode["query_classes"] = torch.from_numpy(class_map.astype(np.int64))
        return add_gfss_targets(episode, label, size, self.use_original_imgsize)


class SyntheticDataModule(EpisodicDataModule):
    """Episodic data module of :class:`SyntheticFSS` (48 classes, 4 folds, no files needed).

    Args:
        min_distractors, max_distractors: range of the number of other-class objects per image.
        img_size: side of the square images the model sees (at least 32; smaller than the real
            benchmarks' 400 so that CPU runs are fast).
        **kwargs: the shared episode options of :class:`~fss.data.base.EpisodicDataModule` (episode
            counts ``null``: 2000 training and 1000 val/test episodes).
    """

    dataset_class = SyntheticFSS

    def __init__(
        self,
        min_distractors: int = 1,
        max_distractors: int = 3,
        img_size: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_size=img_size, **kwargs)
        if not 0 <= min_distractors <= max_distractors:
            raise ValueError(
                "SyntheticDataModule: need 0 <= data.min_distractors <= data.max_distractors, got "
                f"{min_distractors}, {max_distractors}"
            )
        if img_size < 32:
            raise ValueError(f"SyntheticDataModule: data.img_size must be at least 32, got {img_size}")
        self.min_distractors = min_distractors
        self.max_distractors = max_distractors

    def dataset_kwargs(self) -> dict[str, int]:
        return {"min_distractors": self.min_distractors, "max_distractors": self.max_distractors}
