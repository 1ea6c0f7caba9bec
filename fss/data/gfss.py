"""Generalized few-shot segmentation (GFSS) test episodes, as BAM's ``test_GFSS.py`` builds them.

In GFSS the model segments the query into the background, every *base* class (the fold's training
classes, which BAM's base learner knows) and the episode's *novel* class (one held-out class, given
by K supports). ``data.gfss: true`` turns the *test* episodes of a data module into GFSS episodes
(validation and training stay 1-way FS-S); BAM's ``test_GFSS.py`` with ``GSemData`` is the reference.

Episode ``index`` (reference: ``GSemData.__getitem__``):

1. the query is image ``index % n`` of the split's **whole image list** (every image, whatever it
   shows; PASCAL: ``ImageSets/Segmentation/val.txt`` in file order, so the reference's 1000 episodes
   are its first 1000 images); the synthetic set renders a scene around class ``index % 48``;
2. the novel class (:func:`choose_novel_class`): when the query shows no base class, one of the novel
   classes it shows; otherwise any novel class of the fold, uniformly, **whether or not the query
   shows it** (so most episodes test that the novel class is *not* predicted where it is absent);
3. K distinct supports of that class, never the query, from every image of the list that shows it
   (at least one pixel: the reference's GFSS pools, unlike its FS-S lists, have no size threshold);
4. the labels (:func:`gfss_label`): each base class its rank among the base classes plus 1 (1..C,
   the base learner's channels), the chosen novel class C + 1, every other novel class background,
   255 kept.

Episodes carry the usual keys (``query_mask`` is the novel class's 0/1/255 mask, ``class_id`` the
novel class) plus ``gfss_mask`` long [H, W] (the labels above, resized with the query) and, with
``use_original_imgsize``, ``org_gfss_mask`` (at the original size; padded to a square of 255 under
the ``pfenet`` protocol, as the reference's ``ori_resize``). Every draw comes from the episode
generator, so episodes are a pure function of (seed, split, fold, index) like all others; the
reference draws from Python's ``random`` in its loader workers instead, so its episode identities
cannot be reproduced, only their distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from fss.data.episode import IGNORE_INDEX, Episode
from fss.data.transforms import (
    ResizeMethod,
    query_mask_tensor,
    to_label_tensor,
)

log = logging.getLogger(__name__)

#: the episode keys GFSS adds
GFSS_KEYS: tuple[str, ...] = ("gfss_mask", "org_gfss_mask")


def choose_novel_class(
    rng: np.random.Generator, present: Collection[int], base_ids: Collection[int], novel_ids: Sequence[int]
) -> int:
    """The novel class of a GFSS episode whose query shows the classes ``present`` (0-based ids).

    No base class shown: a uniform pick among the novel classes shown (among all novel classes when
    the query shows nothing at all, where the reference fails); otherwise a uniform pick among all
    ``novel_ids``.
    """
    shows_base = any(c in base_ids for c in present)
    shown_novel = [c for c in novel_ids if c in present]
    pool = shown_novel if not shows_base and shown_novel else list(novel_ids)
    return int(pool[int(rng.integers(len(pool)))])


def gfss_label(
    class_map: np.ndarray, base_ids: Sequence[int], novel_class: int, ignore: bool = True
) -> np.ndarray:
    """The GFSS target of a class map.

    Args:
        class_map: uint8 [H, W]: 0 background, ``c + 1`` for class ``c``, 255 ignore.
        base_ids: the base classes (0-based), in label order (ascending: the base learner's channels).
        novel_class: the episode's novel class (0-based).
        ignore: keep 255 as ignore (else background).

    Returns:
        uint8 [H, W]: base class ``base_ids[i]`` -> ``i + 1``, ``novel_class`` -> ``len(base_ids) + 1``,
        every other class and the background -> 0, 255 -> 255 (or 0 with ``ignore`` off).
    """
    lut = np.zeros(256, dtype=np.uint8)
    for rank, c in enumerate(base_ids):
        lut[c + 1] = rank + 1
    lut[novel_class + 1] = len(base_ids) + 1
    lut[IGNORE_INDEX] = IGNORE_INDEX if ignore else 0
    return lut[class_map]


def image_classes_of(class_map: np.ndarray) -> set[int]:
    """The 0-based classes with at least one pixel in a class map (0 background, ``c + 1``, 255)."""
    values = np.unique(class_map)
    return {int(v) - 1 for v in values if 0 < v < IGNORE_INDEX}


def novel_target(label: np.ndarray, novel_label: int) -> np.ndarray:
    """The episode's 0/1/255 query target from its GFSS label: 1 on ``novel_label``, 255 kept."""
    target = (label == novel_label).astype(np.uint8)
    target[label == IGNORE_INDEX] = IGNORE_INDEX
    return target


def add_gfss_targets(
    episode: Episode,
    label: np.ndarray,
    size: int,
    keep_original: bool,
    original: np.ndarray | None = None,
    resize: ResizeMethod = "pil",
) -> Episode:
    """Put ``gfss_mask`` (``label`` resized to ``size``, nearest) and optionally ``org_gfss_mask``
    (``original``, default ``label``) into ``episode``."""
    episode["gfss_mask"] = query_mask_tensor(label, size, resize)
    if keep_original:
        episode["org_gfss_mask"] = to_label_tensor(label if original is None else original)
    return episode


def make_image_gfss_episode(dataset: Any, rng: np.random.Generator, index: int) -> Episode:
    """GFSS episode ``index`` of a file dataset (:class:`fss.data.common.ImageEpisodeDataset` with
    ``gfss_queries``, ``gfss_pools`` and ``load_class_map``; see the module docstring)."""
    from fss.data.common import match_size  # common imports this module

    queries, pools = dataset.gfss_queries, dataset.gfss_pools
    query = queries[index % len(queries)]
    image = dataset.load_image(query)
    class_map = match_size(dataset.load_class_map(query), image)
    novel_ids = dataset.gfss_novel_ids
    base_ids = sorted(dataset.gfss_base_ids)
    novel = choose_novel_class(rng, image_classes_of(class_map), base_ids, novel_ids)
    pool = [item for item in pools[novel] if item != query]
    supports = [pool[int(i)] for i in rng.choice(len(pool), size=dataset.shot, replace=False)]
    ignore = dataset.ignores_boundary()
    label = gfss_label(class_map, base_ids, novel, ignore)
    pairs = [(dataset.load_image(item), dataset.load_target(item, novel, False)) for item in supports]
    # protocol pfenet: aspect kept, padded; scored on the padded original label (GFSS is never training)
    image, label, pairs, org_label = dataset.evaluation_view(image, label, pairs)
    novel_label = len(base_ids) + 1
    episode = dataset.assemble_episode(image, novel_target(label, novel_label), pairs, novel, query, supports)
    if dataset.use_original_imgsize:
        episode["org_query_mask"] = to_label_tensor(novel_target(org_label, novel_label))
    return add_gfss_targets(
        episode, label, dataset.img_size, dataset.use_original_imgsize, org_label, dataset.resize
    )


def usable_novel_classes(
    pools: dict[int, list[Any]], novel_ids: Sequence[int], shot: int, owner: str
) -> list[int]:
    """The novel classes with at least ``shot + 1`` images in their pool (a warning names the others;
    they are never an episode's novel class but still count, as 0, in mIoU_n); an error when none is left."""
    keep = [c for c in novel_ids if len(pools.get(c, ())) >= shot + 1]
    short = {c: len(pools.get(c, ())) for c in novel_ids if c not in keep}
    if not keep:
        raise ValueError(
            f"{owner}: GFSS (data.gfss) needs {shot + 1} images showing a novel class, but every novel class "
            f"has fewer (class: images): {short}; lower data.shot or check data.root"
        )
    if short:
        log.warning(
            "%s: GFSS leaves out the novel classes with fewer than %d images (class: images): %s",
            owner,
            shot + 1,
            short,
        )
    return keep
