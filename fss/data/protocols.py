"""The reference code's test episodes, reproduced episode for episode (``data.episode_order``).

fss draws each episode from its own generator (:mod:`fss.data.sampling`): a pure function of
``(seed, split, fold, index)``. The reference test scripts draw from NumPy's *legacy global*
generator instead, and a published number is the mean over *their* episodes. With 1000 episodes
the support draw alone moves mIoU by tenths of a point, so reproducing a number to the last
decimal needs their exact sequence. ``episode_order`` selects it for validation and test episodes
(training episodes are unseeded in every reference, so they always follow fss's rule):

``fss``
    fss's own rule (the default): independent per-episode generators, validation and test draw
    different supports, the K supports of an episode are K different images.
``hsnet``
    HSNet's ``test.py`` (also VAT's ``test.py`` and the HM code, which evaluate with it):
    ``np.random.seed(seed)`` once, then episodes 0, 1, 2, ... in order, every draw from that one
    stream, so each episode depends on all earlier ones. Validation repeats the test sequence
    (their training script seeds validation the same way, on the same split).
``asnet``
    ASNet's ``fs-s`` code (``dahyun-kang/ifsl``): ``np.random.seed(index)`` before each episode,
    so episode ``index`` depends on nothing else (with ``seed`` s > 0 fss seeds with
    ``index + s * num_episodes``; s = 0 is ASNet's sequence).

Within an episode the references draw (with ``np.random.choice(seq, 1, replace=False)``, which
takes the first element of a permutation of the whole sequence): for COCO-20i the class among the
fold's 20 classes and the query among the class's images; for PASCAL-5i and FSS-1000 the query is
fixed by the index. Then supports, one at a time, from the class's images until ``shot`` of them
differ from the query: 5-shot supports may repeat. The query of PASCAL-5i episode ``i`` is list
entry ``i % len(list)``; FSS-1000 visits the test images class by class, file names sorted as
strings (``1.jpg, 10.jpg, 2.jpg, ...``), and draws supports from the class's images in natural order
(``1 .. 10``: HSNet draws a number from 1 to 10).

The whole sequence of identities (query, supports, class) is computed when the dataset is built,
so any number of dataloader workers or DDP processes sees the same episodes; only the images are
read later. Datasets provide it through :meth:`fss.data.common.ImageEpisodeDataset.reference_query`
and :meth:`~fss.data.common.ImageEpisodeDataset.reference_pool`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Literal, NamedTuple

import numpy as np

#: ``fss`` (own per-episode generators) or a reference's test sequence (see the module docstring)
EpisodeOrder = Literal["fss", "hsnet", "asnet"]
EPISODE_ORDERS: tuple[str, ...] = ("fss", "hsnet", "asnet")


class EpisodeIdentity(NamedTuple):
    """Which images make an episode: the query item, the K support items and the class."""

    query: Hashable
    supports: tuple[Hashable, ...]
    class_id: int


def check_episode_order(order: str, owner: str) -> None:
    """Raise a ``ValueError`` naming ``owner`` unless ``order`` is one of :data:`EPISODE_ORDERS`."""
    if order not in EPISODE_ORDERS:
        raise ValueError(
            f"{owner}: episode_order must be 'fss', 'hsnet' (HSNet/VAT/HM test.py) or 'asnet' "
            f"(ASNet fs-s), got {order!r}"
        )


def legacy_pick(rs: np.random.RandomState, n: int) -> int:
    """The position ``np.random.choice(seq, 1, replace=False)[0]`` takes in a sequence of length ``n``."""
    return int(rs.choice(n, 1, replace=False)[0])


def reference_sequence(
    order: EpisodeOrder,
    seed: int,
    num_episodes: int,
    shot: int,
    query_of: Callable[[np.random.RandomState, int], tuple[Hashable, int]],
    pool_of: Callable[[int], Sequence[Hashable]],
) -> list[EpisodeIdentity]:
    """The identities of episodes ``0 .. num_episodes - 1`` as the reference test script draws them.

    Args:
        order: ``hsnet`` (one legacy generator seeded with ``seed``, episodes in order) or ``asnet``
            (a legacy generator per episode, seeded with ``index + seed * num_episodes``).
        seed: the data module's ``seed`` (0 in every reference).
        num_episodes: the number of episodes.
        shot: supports per episode.
        query_of: ``(generator, index) -> (query item, class id)``, drawing what the reference draws.
        pool_of: ``class id -> items`` the supports are drawn from, in the reference's order.

    Raises:
        ValueError: for ``order="fss"`` (it has no precomputed sequence) or a class whose pool holds
            no item other than the query (the reference would loop forever).
    """
    if order not in ("hsnet", "asnet"):
        raise ValueError(f"reference_sequence needs order 'hsnet' or 'asnet', got {order!r}")

    def draw(rs: np.random.RandomState, index: int) -> EpisodeIdentity:
        query, class_id = query_of(rs, index)
        pool = pool_of(class_id)
        if not any(item != query for item in pool):
            raise ValueError(f"class {class_id} has no support image other than the query {query!r}")
        supports: list[Hashable] = []
        while len(supports) < shot:  # with replacement; only the query is redrawn
            item = pool[legacy_pick(rs, len(pool))]
            if item != query:
                supports.append(item)
        return EpisodeIdentity(query, tuple(supports), int(class_id))

    if order == "hsnet":
        rs = np.random.RandomState(seed)
        return [draw(rs, index) for index in range(num_episodes)]
    return [draw(np.random.RandomState(index + seed * num_episodes), index) for index in range(num_episodes)]
