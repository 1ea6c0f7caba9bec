"""Test-only cross-domain targets: what Deepglobe, ISIC2018, Chest X-ray and SUIM share.

A cross-domain few-shot model is trained on a source benchmark (PASCAL VOC, COCO-20i) and tested on
targets whose images look nothing like it. Every target here:

* has one fold and no training split: building its ``train`` split raises an error that says to
  train on a source dataset; ``val`` and ``test`` both use all of its classes (they draw different
  episodes, as elsewhere);
* shows class ``class_ids[index % n]`` in episode ``index`` (balanced, as the PATNet loaders do);
* reads binary masks (foreground where the grey value is >= 128, as PATNet does);
* has two episode orders (``episode_order``):

  - ``fss`` (default): the query and ``shot`` distinct supports are drawn from the episode
    generator, so an episode is a pure function of (seed, split, index), whatever the number of
    workers or processes (:mod:`fss.data.sampling`);
  - ``patnet``: the sequence of PATNet's ``test.py`` (seed 0: its ``fix_randseed(0)``), episode
    for episode. Its loaders draw from the one global legacy NumPy generator in episode order: the
    query with ``choice(items, 1, replace=False)`` from the class's sorted file list, then supports
    the same way until ``shot`` of them differ from the query (so 5-shot supports may repeat). The
    whole sequence is computed once when the dataset is built, with a ``RandomState(seed)`` making
    the same calls, so any number of workers or processes sees it unchanged. It needs the same files
    as the reference (the prepared folders, names sorted as strings).

Subclasses set ``num_classes``, ``class_names``, ``display_name``, ``default_episodes`` and
``LAYOUT``, and implement :meth:`TargetDataset.find_root`, :meth:`TargetDataset.list_items`
(the class's items in the reference's sorted order), :meth:`load_image`, :meth:`item_files` and,
unless masks are per-class binary files, :meth:`load_target`.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fss.data.base import EpisodicDataModule
from fss.data.common import DatasetLayoutError, ImageEpisodeDataset, read_image, read_label, usable_classes
from fss.data.episode import Episode
from fss.data.transforms import build_episode

#: ``fss`` (a pure function of the episode key) or ``patnet`` (PATNet's test sequence)
EpisodeOrder = Literal["fss", "patnet"]
EPISODE_ORDERS: tuple[str, ...] = ("fss", "patnet")

#: one episode's identity: (query item, class id, support items)
Identity = tuple[Any, int, list[Any]]


def check_episode_order(order: str, owner: str) -> None:
    """Raise a ``ValueError`` naming ``owner`` unless ``order`` is a known episode order."""
    if order not in EPISODE_ORDERS:
        raise ValueError(f"{owner}: episode_order must be one of {EPISODE_ORDERS}, got {order!r}")


def reference_sequence(
    class_items: dict[int, list[Any]], class_ids: list[int], shot: int, num_episodes: int, seed: int
) -> list[Identity]:
    """The episodes of PATNet's test loop: (query, class, supports) of episodes ``0 .. num_episodes-1``.

    Episode ``i`` shows ``class_ids[i % len(class_ids)]``; the query is item
    ``permutation(n)[0]`` of that class's list (what ``choice(list, 1, replace=False)`` returns), then
    supports are drawn the same way, skipping draws equal to the query, until there are ``shot``.
    All draws come from one ``numpy.random.RandomState(seed)`` in this order.
    """
    rs = np.random.RandomState(seed)
    sequence: list[Identity] = []
    for index in range(num_episodes):
        class_id = class_ids[index % len(class_ids)]
        items = class_items[class_id]
        query = items[int(rs.choice(len(items), 1, replace=False)[0])]
        supports: list[Any] = []
        while len(supports) < shot:
            support = items[int(rs.choice(len(items), 1, replace=False)[0])]
            if support != query:
                supports.append(support)
        sequence.append((query, class_id, supports))
    return sequence


def binary_mask(path: Path) -> np.ndarray:
    """A mask file as uint8 0/1 [H, W]: grey value >= 128 (RGB masks converted to grey first)."""
    return (read_label(path, grey=True) >= 128).astype(np.uint8)


class TargetDataset(ImageEpisodeDataset):
    """A test-only cross-domain target (see the module docstring).

    Args:
        root: the dataset folder (see each target's layout), or the folder holding it.
        split: ``val`` or ``test`` (``train`` raises).
        episode_order: ``fss`` or ``patnet``.
        fold, shot, num_episodes, seed, img_size, use_original_imgsize: see
            :class:`~fss.data.base.EpisodicDataset` (``fold`` is 0; ``num_episodes=None``: the
            target's ``default_episodes``).
    """

    num_folds: ClassVar[int] = 1
    #: episodes when ``num_episodes`` is None (PATNet: 600 for every target but FSS-1000)
    default_episodes: ClassVar[int] = 600
    #: the expected layout, shown in errors
    LAYOUT: ClassVar[str] = ""

    def __init__(
        self,
        root: str | Path,
        split: str,
        episode_order: EpisodeOrder = "fss",
        **kwargs: Any,
    ) -> None:
        check_episode_order(episode_order, type(self).__name__)
        kwargs.setdefault("num_episodes", None)  # the target's default
        # the parent's reference orders (HSNet's, ASNet's) are not the targets': it keeps "fss", and this
        # class follows PATNet's sequence itself
        super().__init__(split=split, **kwargs)
        self.episode_order = episode_order  # type: ignore[assignment]
        self.root = self.find_root(Path(root).expanduser())
        for class_id in self.class_ids:
            self.class_items[class_id] = self.list_items(class_id)
        self.finalize_classes()
        self._sequence: list[Identity] | None = None

    # ------------------------------------------------------------------ classes
    def split_class_ids(self, split: str, fold: int) -> list[int]:  # type: ignore[override]
        if split == "train":
            raise ValueError(
                f"{self.display_name} is a test-only cross-domain target: it has no training split. "
                "Train on a source dataset (e.g. configs/pascal20_hsnet_hm.yaml) and test here "
                "(fss test, or fss crossdomain)"
            )
        return list(range(self.num_classes))

    def default_num_episodes(self) -> int:
        return self.default_episodes

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def find_root(self, root: Path) -> Path:
        """The dataset folder under (or at) ``root``; raise :class:`DatasetLayoutError` showing LAYOUT."""

    @abstractmethod
    def list_items(self, class_id: int) -> list[Any]:
        """The items holding ``class_id``, sorted as the reference sorts them."""

    def layout_error(self, problem: str) -> DatasetLayoutError:
        """A :class:`DatasetLayoutError`: ``problem``, then the expected layout."""
        return DatasetLayoutError(f"{self.display_name}: {problem}. Expected layout:\n{self.LAYOUT}")

    def finalize_classes(self) -> None:
        """As :meth:`ImageEpisodeDataset.finalize_classes`; the reference order draws supports with
        replacement, so there a class needs only 2 images whatever the shot."""
        if self.episode_order != "patnet":
            super().finalize_classes()
            return
        self.usable_class_ids = usable_classes(
            self.class_items, self.class_ids, 1, f"{self.display_name} {self.split}", self.class_names
        )

    # ------------------------------------------------------------------ episodes
    def reference(self) -> list[Identity]:
        """PATNet's test sequence for this dataset (computed once)."""
        if self._sequence is None:
            self._sequence = reference_sequence(
                self.class_items, self.usable_class_ids, self.shot, self.num_episodes, self.seed
            )
        return self._sequence

    def identity(self, rng: np.random.Generator, index: int) -> Identity:
        """(query, class id, supports) of episode ``index``."""
        if self.episode_order == "patnet":
            return self.reference()[index]
        class_id = self.usable_class_ids[index % len(self.usable_class_ids)]
        items = self.class_items[class_id]
        query = items[int(rng.integers(len(items)))]
        return query, class_id, self.draw_supports(rng, class_id, query)

    @property
    def follows_reference(self) -> bool:
        return False  # the parent's reference orders; PATNet's is :meth:`reference`

    @property
    def sequence(self) -> None:
        return None  # the parent's precomputed orders; PATNet's is computed when the dataset is built

    def pick_query(self, rng: np.random.Generator, index: int) -> tuple[Any, int]:
        query, class_id, _ = self.identity(rng, index)
        return query, class_id

    def episode_identity(self, index: int) -> tuple[str, list[str], int]:
        """``(query name, support names, class id)`` of episode ``index``, without reading any image."""
        query, class_id, supports = self.identity(self.rng(index), index)
        return self.item_name(query), [self.item_name(s) for s in supports], class_id

    def make_episode(self, rng: np.random.Generator, index: int) -> Episode:
        query, class_id, supports = self.identity(rng, index)
        pairs = [self.load_pair(item, class_id, k == 0, rng) for k, item in enumerate([query, *supports])]
        return build_episode(
            pairs[0][0],
            pairs[0][1],
            [img for img, _ in pairs[1:]],
            [tgt for _, tgt in pairs[1:]],
            class_id=class_id,
            img_size=self.img_size,
            query_name=self.item_name(query),
            support_names=[self.item_name(item) for item in supports],
            keep_original_mask=self.use_original_imgsize,
        )

    # ------------------------------------------------------------------ files
    def load_image(self, item: Any) -> np.ndarray:
        return read_image(self.item_files(item)[0])

    def load_target(self, item: Any, class_id: int, query: bool) -> np.ndarray:
        return binary_mask(self.item_files(item)[1])

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, root={str(self.root)!r}, episode_order={self.episode_order!r})"


class TargetDataModule(EpisodicDataModule):
    """The data module of a test-only cross-domain target (``fss test`` / ``fss crossdomain`` only).

    Args:
        root: the dataset folder, or the folder holding it (PATNet's ``--datapath``, which holds
            ``Deepglobe/``, ``ISIC/``, ``LungSegmentation/`` and ``FSS-1000/``).
        episode_order: ``fss`` (episodes a pure function of their key) or ``patnet``
            (PATNet's ``test.py`` sequence, episode for episode; see :mod:`fss.data.target`).
        **kwargs: the shared episode options of :class:`~fss.data.base.EpisodicDataModule`
            (``fold`` is 0; episode counts ``null``: the target's default, 600 for PATNet's targets).
    """

    #: no training split (``fss data check`` builds only the test split)
    test_only: ClassVar[bool] = True

    def __init__(self, root: str, episode_order: EpisodeOrder = "fss", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_episode_order(episode_order, f"{type(self).__name__} (data.episode_order)")
        self.root = root
        self.episode_order = episode_order

    @property
    def eval_class_ids(self) -> list[int]:
        return list(range(self.num_classes))

    @property
    def train_class_ids(self) -> list[int]:
        """None: a target has no training classes."""
        return []

    def dataset_kwargs(self) -> dict[str, Any]:
        return {"root": self.root, "episode_order": self.episode_order}
