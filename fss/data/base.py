"""Base classes of every episodic few-shot dataset and data module.

How to add a dataset (PASCAL-5i, COCO-20i, FSS-1000 and the synthetic set all follow this):

1. Subclass :class:`EpisodicDataset`. Set the class attributes ``num_classes``, ``class_names`` and
   ``num_folds`` (override :meth:`EpisodicDataset.fold_class_ids` when a fold is not a contiguous
   block of class ids, e.g. COCO-20i's interleaved folds, or :meth:`EpisodicDataset.split_class_ids`
   when the splits are fixed class lists, e.g. FSS-1000). In ``__init__`` take your own arguments
   (``root``, ...) plus ``**kwargs`` for the base ones, call ``super().__init__(**kwargs)`` and build
   your index (which images hold which class), raising an error that names the missing path and the
   expected layout.
2. Implement ``make_episode(rng, index) -> Episode``: draw *every* random choice from ``rng`` (a NumPy
   generator that is a pure function of seed, split, fold, epoch and index; never use ``random``,
   ``np.random.*`` or ``torch.rand*`` globals), load the images and label maps, turn the label maps
   into 0/1/255 target maps (:func:`fss.data.transforms.binarize_label`) and return
   :func:`fss.data.transforms.build_episode` (pass ``keep_original_mask=self.use_original_imgsize``).
   For FS-CS episodes (``data.fscs``) also implement ``make_fscs_episode(rng, index)`` (see
   :mod:`fss.data.fscs`; file datasets inherit one from ``ImageEpisodeDataset``).
   ``index`` may select the query deterministically (the reference PASCAL code uses
   ``index % len(pairs)``); ``self.class_ids`` are the classes of this split.
   Override ``default_num_episodes()`` (used when an episode count is ``None``, the default).
   File-based datasets can build on :class:`fss.data.common.ImageEpisodeDataset`, which does the
   query/support drawing and loading once for all of them.
3. Subclass :class:`EpisodicDataModule` (or :class:`fss.data.common.FileDataModule` for a dataset of
   files, which adds ``augment`` / ``augment_config``): set ``dataset_class`` and write an ``__init__``
   that declares *only your own* typed, documented arguments followed by ``**kwargs``, and passes
   ``**kwargs`` on to ``super().__init__``. The shared episode options (fold, shot, img_size,
   batch_size, eval_batch_size, num_workers, the episode counts, seed, use_original_imgsize,
   support_label, fscs, way, class_maps, gfss, test_seeds) are declared once, here; jsonargparse follows ``**kwargs`` to this
   class, so they still appear, typed and documented, in ``fss fit --help`` for your module. To give one of them
   another default, declare just that one again and pass it on by name (the synthetic module does
   so for ``img_size``). Return your dataset's extra arguments from
   :meth:`EpisodicDataModule.dataset_kwargs` (merge with ``super().dataset_kwargs()``). The base
   class builds the datasets in ``setup`` and the dataloaders with
   :class:`~fss.data.sampling.EpisodeSampler` and :func:`~fss.data.episode.collate_episodes`.
4. Re-export the data module in ``fss/data/__init__.py`` so configs can say
   ``class_path: fss.data.MyDataModule``, and add a test with a tiny fixture in the real on-disk format.

Splits are named ``train``, ``val`` and ``test`` (the Lightning stage names; the reference code's
``trn`` is not accepted). Val and test both use the held-out fold's classes; they draw different
episodes (the split is part of the episode seed).

Distributed training: run the Trainer with ``use_distributed_sampler=False`` (the fss CLI makes it the default);
the episode sampler splits the episodes over the ranks itself, see :mod:`fss.data.sampling`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from fss.data.episode import Episode, collate_episodes
from fss.data.fscs import FSCSEpisode
from fss.data.sampling import SPLIT_CODES, EpisodeSampler, decode_key, episode_rng, split_code
from fss.data.transforms import mask_to_bbox

SPLITS: tuple[str, ...] = tuple(SPLIT_CODES)

#: how support masks are given to the model: full masks, the filled bounding box of each mask, or
#: only the class tag (every support mask is all ones: the whole image is "the class")
SupportLabel = Literal["mask", "bbox", "tag"]
SUPPORT_LABELS: tuple[str, ...] = ("mask", "bbox", "tag")


def check_support_label(support_label: str, owner: str) -> None:
    """Raise a ``ValueError`` naming ``owner`` unless ``support_label`` is ``mask``, ``bbox`` or ``tag``."""
    if support_label not in SUPPORT_LABELS:
        raise ValueError(f"{owner}: support_label must be 'mask', 'bbox' or 'tag', got {support_label!r}")


def contiguous_fold_class_ids(num_classes: int, num_folds: int, fold: int) -> list[int]:
    """PASCAL-5i style folds: fold ``i`` holds classes ``i*n .. i*n + n-1`` with ``n = num_classes // num_folds``."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    per_fold = num_classes // num_folds
    return list(range(fold * per_fold, (fold + 1) * per_fold))


class EpisodicDataset(Dataset[Episode], ABC):
    """A map-style dataset of few-shot episodes, each a pure function of its key.

    Args:
        split: ``train``, ``val`` or ``test``.
        fold: the held-out fold (its classes are used for val/test; training uses the others).
        shot: number of support images K.
        num_episodes: episodes per epoch; ``None`` asks :meth:`default_num_episodes`.
        seed: the episode seed (see :func:`fss.data.sampling.episode_rng`).
        img_size: side S of the square images the model sees.
        use_original_imgsize: also return ``org_query_mask`` (the query mask at its original size).
        support_label: ``mask`` (full support masks), ``bbox``: every support mask is replaced by
            the filled bounding box of its foreground (:func:`fss.data.transforms.mask_to_bbox`), the
            weak-annotation setting, or ``tag``: every support mask is all ones (only the class tag is
            known: iFSL's weak supervision). Only ``support_masks`` change, after the episode is made,
            so it composes with any dataset, episode type and masking strategy. Subclasses that do not
            take this argument get it set as an attribute by :meth:`EpisodicDataModule.build_dataset`.

    FS-CS episodes (:mod:`fss.data.fscs`): with the attributes ``fscs = True`` and ``way = N`` (set by
    :meth:`EpisodicDataModule.build_dataset`), items are N-way FS-CS episodes made by
    :meth:`make_fscs_episode` instead of 1-way FS-S episodes.

    ``dataset[key]`` decodes ``key`` into ``(epoch, index)`` (:func:`fss.data.sampling.decode_key`;
    keys below ``len(dataset)`` are epoch 0) and returns ``make_episode(rng, index)``. Validation and
    test episodes ignore the epoch, so they never change.
    """

    #: ``mask``, ``bbox`` or ``tag`` (see the class docstring); a class default so subclasses need not
    #: forward it
    support_label: str = "mask"
    #: FS-CS episodes of ``way`` ways instead of FS-S ones (set by the data module, see the docstring)
    fscs: bool = False
    way: int = 1
    #: episodes also carry ``query_classes``, the query's class map (the base learner's labels, BAM
    #: stage 1); a class default so that subclasses need not forward it (the data module sets it)
    class_maps: bool = False
    #: generalized few-shot test episodes (:mod:`fss.data.gfss`), set by the data module for the test split
    gfss: bool = False

    #: total number of classes of the benchmark (size of the metric state)
    num_classes: ClassVar[int]
    #: class names, ``class_names[class_id]``
    class_names: ClassVar[Sequence[str]]
    #: number of class-disjoint folds
    num_folds: ClassVar[int] = 4

    def __init__(
        self,
        split: str,
        fold: int = 0,
        shot: int = 1,
        num_episodes: int | None = 1000,
        seed: int = 0,
        img_size: int = 400,
        use_original_imgsize: bool = False,
        support_label: SupportLabel = "mask",
    ) -> None:
        split_code(split)  # validates the name
        name = type(self).__name__
        if not 0 <= fold < self.num_folds:
            raise ValueError(f"{name}: fold must be in [0, {self.num_folds}), got {fold}")
        if shot < 1:
            raise ValueError(f"{name}: shot must be >= 1, got {shot}")
        if num_episodes is not None and num_episodes < 1:
            raise ValueError(
                f"{name}: num_episodes must be >= 1 (or None for the default), got {num_episodes}"
            )
        if seed < 0:
            raise ValueError(f"{name}: seed must be non-negative, got {seed}")
        if img_size < 8:
            raise ValueError(f"{name}: img_size must be at least 8, got {img_size}")
        self.split = split
        self.fold = fold
        self.shot = shot
        self.seed = seed
        self.img_size = img_size
        self.use_original_imgsize = use_original_imgsize
        check_support_label(support_label, name)
        self.support_label = support_label
        self._num_episodes = num_episodes
        self.class_ids: list[int] = self.split_class_ids(split, fold)

    # ----------------------------------------------------------------------------------- classes
    @classmethod
    def fold_class_ids(cls, fold: int) -> list[int]:
        """The classes of ``fold`` (contiguous blocks by default, as in PASCAL-5i)."""
        return contiguous_fold_class_ids(cls.num_classes, cls.num_folds, fold)

    @classmethod
    def split_class_ids(cls, split: str, fold: int) -> list[int]:
        """The classes episodes of ``split`` draw from: fold ``fold`` for val/test, the others for train."""
        held_out = cls.fold_class_ids(fold)
        if split == "train":
            excluded = set(held_out)
            return [c for c in range(cls.num_classes) if c not in excluded]
        return held_out

    # ----------------------------------------------------------------------------------- length
    def default_num_episodes(self) -> int:
        """Episodes per epoch when ``num_episodes`` is ``None`` (override, e.g. number of training pairs)."""
        raise ValueError(
            f"{type(self).__name__} has no default number of {self.split} episodes: set num_episodes "
            f"(data.{self.split}_episodes in a config)"
        )

    @property
    def num_episodes(self) -> int:
        """Episodes per epoch."""
        return self._num_episodes if self._num_episodes is not None else self.default_num_episodes()

    def __len__(self) -> int:
        return self.num_episodes

    # ----------------------------------------------------------------------------------- episodes
    def rng(self, index: int, epoch: int = 0) -> np.random.Generator:
        """The generator of episode ``index`` (epoch forced to 0 outside training)."""
        epoch = epoch if self.split == "train" else 0
        return episode_rng(self.seed, self.split, self.fold, index, epoch)

    def __getitem__(self, key: int) -> Episode:
        epoch, index = decode_key(key, self.num_episodes)
        return self._build(index, epoch)

    def episode(self, index: int, epoch: int = 0) -> Episode:
        """Episode ``index`` of ``epoch`` (a convenience for notebooks and tests)."""
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode index {index} out of range [0, {self.num_episodes})")
        return self._build(index, epoch)

    def _build(self, index: int, epoch: int) -> Episode:
        rng = self.rng(index, epoch)
        if self.fscs:
            episode: Any = self.make_fscs_episode(rng, index)
        elif self.gfss:
            episode = self.make_gfss_episode(rng, index)
        else:
            episode = self.make_episode(rng, index)
        return self.apply_support_label(episode)

    def apply_support_label(self, episode: Episode) -> Episode:
        """Replace ``support_masks`` ([K, H, W], or [N, K, H, W] in FS-CS) by their filled boxes
        (``bbox``) or by ones (``tag``); ``mask`` keeps them.

        Also checks that a dataset asked for class maps (``class_maps``) gave ``query_classes``.
        """
        if self.class_maps and "query_classes" not in episode:
            raise ValueError(
                f"data.class_maps: {type(self).__name__} does not provide the query's class map "
                "(query_classes), which the base learner trains on; use a dataset that does "
                "(SyntheticFSS, Pascal5iDataset, COCO20iDataset with PNG masks)"
            )
        if self.support_label == "bbox":
            episode["support_masks"] = mask_to_bbox(episode["support_masks"])
        elif self.support_label == "tag":
            episode["support_masks"] = torch.ones_like(episode["support_masks"])
        return episode

    def fscs_class_ids(self) -> list[int]:
        """The classes FS-CS episodes draw their ways from (override when some classes are unusable)."""
        return self.class_ids

    def configure_fscs(self, fscs: bool, way: int) -> None:
        """Switch to N-way FS-CS episodes (``fscs``) or back to 1-way FS-S ones; checks ``way``."""
        name = type(self).__name__
        if way < 1:
            raise ValueError(f"{name}: data.way must be >= 1, got {way}")
        if way > 1 and not fscs:
            raise ValueError(f"{name}: data.way={way} needs data.fscs: true (N-way episodes are FS-CS)")
        if fscs:
            available = len(self.fscs_class_ids())
            if way > available:
                raise ValueError(
                    f"{name}: data.way={way} but the {self.split} split of fold {self.fold} has only "
                    f"{available} usable classes; lower data.way"
                )
        self.fscs = fscs
        self.way = way

    @property
    def gfss_base_ids(self) -> list[int]:
        """The base classes of GFSS episodes: the fold's training classes, ascending (BAM's base learner's)."""
        return sorted(self.split_class_ids("train", self.fold))

    @property
    def gfss_novel_ids(self) -> list[int]:
        """The classes GFSS episodes draw their novel class from (this split's; file datasets keep those
        with enough images)."""
        return self.class_ids

    def configure_gfss(self, gfss: bool) -> None:
        """Switch to generalized few-shot episodes (:mod:`fss.data.gfss`; val/test splits only)."""
        if gfss and self.split == "train":
            raise ValueError(
                f"{type(self).__name__}: GFSS episodes (data.gfss) are test episodes, not training ones"
            )
        if gfss and self.fscs:
            raise ValueError(f"{type(self).__name__}: data.gfss and data.fscs cannot be combined")
        self.gfss = gfss

    @abstractmethod
    def make_episode(self, rng: np.random.Generator, index: int) -> Episode:
        """Build episode ``index`` drawing all randomness from ``rng`` (a ``numpy.random.Generator``)."""

    def make_fscs_episode(self, rng: np.random.Generator, index: int) -> FSCSEpisode:
        """Build the ``self.way``-way FS-CS episode ``index`` from ``rng`` (see :mod:`fss.data.fscs`)."""
        raise NotImplementedError(f"{type(self).__name__} has no FS-CS episodes (data.fscs)")

    def make_gfss_episode(self, rng: np.random.Generator, index: int) -> Episode:
        """Build the generalized few-shot test episode ``index`` from ``rng`` (see :mod:`fss.data.gfss`)."""
        raise NotImplementedError(f"{type(self).__name__} has no GFSS episodes (data.gfss)")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, fold={self.fold}, shot={self.shot}, "
            f"num_episodes={self._num_episodes}, seed={self.seed}, img_size={self.img_size})"
        )


class EpisodeSets(Dataset[Episode]):
    """Several independent episode sets one after the other (``data.test_seeds``).

    Item ``i`` is episode ``i - offset_k`` of set ``k`` (the sets keep their own episodes), with one
    more key, ``episode_set`` (long []): ``k``. Keys beyond the total length wrap around (the sampler
    may fold an epoch into them; test episodes do not depend on it).

    Args:
        datasets: the sets, e.g. one dataset per seed.
        labels: a name per set (``seed0``, ...), for logs and summaries.
    """

    def __init__(self, datasets: Sequence[EpisodicDataset], labels: Sequence[str]) -> None:
        if not datasets or len(datasets) != len(labels):
            raise ValueError(
                f"EpisodeSets needs one label per dataset, got {len(datasets)} and {len(labels)}"
            )
        self.datasets = list(datasets)
        self.labels = list(labels)
        self.offsets = np.cumsum([0, *(len(d) for d in self.datasets)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, key: int) -> Episode:
        index = int(key) % len(self)
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        episode = self.datasets[k][index - self.offsets[k]]
        episode["episode_set"] = torch.tensor(k, dtype=torch.long)
        return episode


class EpisodicDataModule(pl.LightningDataModule):
    """A LightningDataModule of episodic train/val/test data for one fold.

    Args:
        fold: held-out fold (val/test classes); training uses the other folds' classes.
        shot: support images per episode (K).
        img_size: side of the square images the model sees.
        batch_size: episodes per training batch.
        eval_batch_size: episodes per validation/test batch; ``None`` means ``batch_size``.
        num_workers: dataloader worker processes (episodes do not depend on it).
        train_episodes: training episodes per epoch; ``None``: the dataset's default (PASCAL-5i,
            COCO-20i, FSS-1000: one pass over the training images; synthetic: 2000).
        val_episodes: validation episodes (fixed: the same every epoch and run); ``None``: the
            dataset's default (1000 as the references; FSS-1000: every image of the split once).
        test_episodes: test episodes (fixed; drawn independently of the validation ones); ``None``:
            the dataset's default, as for ``val_episodes``.
        seed: episode seed; changing it draws a different set of episodes.
        use_original_imgsize: val/test episodes also carry ``org_query_mask`` at the original size, to
            evaluate there (needs ``eval_batch_size=1``).
        support_label: ``mask``, ``bbox`` (every support mask replaced by its filled bounding box) or
            ``tag`` (every support mask all ones: class tags only, iFSL's weak supervision), in all
            splits; see :class:`EpisodicDataset`.
        fscs: integrative few-shot classification and segmentation episodes (:mod:`fss.data.fscs`):
            ``way`` support classes of ``shot`` images each, a query showing any subset of them (or
            none), ``query_class_presence`` [N] and an (N+1)-class ``query_mask``.
        way: number of support classes N of an FS-CS episode (1 without ``fscs``).
        class_maps: episodes also carry ``query_classes`` long [H, W], the query's class map (0
            background, ``c + 1`` for class ``c``, 255 ignore), resized and augmented with the query:
            the labels of a base learner (BAM's stage 1, ``fss.models.PSPNet``). Synthetic, PASCAL, COCO
            with PNG masks.
        gfss: the *test* episodes are generalized few-shot episodes (BAM's GFSS protocol,
            :mod:`fss.data.gfss`): the query labelled with the background, every base (training)
            class and the episode's novel class (``gfss_mask``); ``fss test`` then also reports
            mIoU over novel, base and all classes, FB-IoU and pIoU (a model with a base learner: BAM).
            PASCAL, COCO with PNG masks and the synthetic set.
        test_seeds: evaluate on several independent test episode sets in one ``fss test``, one per
            seed (e.g. ``[0, 1, 2, 3, 4]``; ``test_episodes`` each); the test then reports every set's
            mIoU and FB-IoU, their mean, standard deviation and 95% confidence interval (see
            ``docs/metrics.md``). ``null``: one set, drawn with ``seed``.

    Subclasses declare only their own options plus ``**kwargs`` (see the module docstring).

    After ``__init__``: ``num_classes`` (total classes, for the metric state), ``class_names`` and
    ``eval_class_ids`` (the held-out classes) are available without building any dataset.
    """

    #: the dataset class built for each split (set by subclasses)
    dataset_class: ClassVar[type[EpisodicDataset]]

    def __init__(
        self,
        fold: int = 0,
        shot: int = 1,
        img_size: int = 400,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_episodes: int | None = None,
        val_episodes: int | None = None,
        test_episodes: int | None = None,
        seed: int = 0,
        use_original_imgsize: bool = False,
        support_label: SupportLabel = "mask",
        fscs: bool = False,
        way: int = 1,
        class_maps: bool = False,
        gfss: bool = False,
        test_seeds: list[int] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if way < 1:
            raise ValueError(f"{name}: data.way must be >= 1, got {way}")
        if way > 1 and not fscs:
            raise ValueError(f"{name}: data.way={way} needs data.fscs: true (N-way episodes are FS-CS)")
        if gfss and fscs:
            raise ValueError(f"{name}: data.gfss and data.fscs cannot be combined (pick one test protocol)")
        check_support_label(support_label, f"{name} (data.support_label)")
        if test_seeds is not None:
            test_seeds = [int(s) for s in test_seeds]
            if not test_seeds or min(test_seeds) < 0 or len(set(test_seeds)) != len(test_seeds):
                raise ValueError(
                    f"{name}: data.test_seeds must be distinct non-negative seeds (e.g. [0, 1, 2, 3, 4]) or "
                    f"null, got {test_seeds}"
                )
        num_folds = self.dataset_class.num_folds
        if not 0 <= fold < num_folds:
            raise ValueError(f"{name}: data.fold must be in [0, {num_folds}), got {fold}")
        for option, value in (("batch_size", batch_size), ("shot", shot)):
            if value < 1:
                raise ValueError(f"{name}: data.{option} must be >= 1, got {value}")
        for option, value in (
            ("train_episodes", train_episodes),
            ("val_episodes", val_episodes),
            ("test_episodes", test_episodes),
        ):
            if value is not None and value < 1:
                raise ValueError(
                    f"{name}: data.{option} must be >= 1 (or null: the dataset's default), got {value}"
                )
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"{name}: data.eval_batch_size must be >= 1 (or null), got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"{name}: data.num_workers must be >= 0, got {num_workers}")
        if use_original_imgsize and (eval_batch_size or batch_size) != 1:
            raise ValueError(
                f"{name}: data.use_original_imgsize needs data.eval_batch_size=1 (original sizes differ)"
            )
        self.fold = fold
        self.shot = shot
        self.img_size = img_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.train_episodes = train_episodes
        self.val_episodes = val_episodes
        self.test_episodes = test_episodes
        self.seed = seed
        self.use_original_imgsize = use_original_imgsize
        self.support_label = support_label
        self.fscs = fscs
        self.way = way
        self.class_maps = class_maps
        self.gfss = gfss
        self.test_seeds = test_seeds
        self.datasets: dict[str, Dataset[Episode]] = {}

    # ----------------------------------------------------------------------------------- classes
    @property
    def num_classes(self) -> int:
        """Total number of classes of the benchmark."""
        return self.dataset_class.num_classes

    @property
    def class_names(self) -> list[str]:
        """``class_names[class_id]``."""
        return list(self.dataset_class.class_names)

    @property
    def eval_class_ids(self) -> list[int]:
        """The classes of the val/test episodes (the held-out fold)."""
        return self.dataset_class.split_class_ids("val", self.fold)

    @property
    def train_class_ids(self) -> list[int]:
        """The classes of the training episodes."""
        return self.dataset_class.split_class_ids("train", self.fold)

    # ----------------------------------------------------------------------------------- datasets
    def dataset_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of ``dataset_class`` (e.g. ``{"root": self.root}``)."""
        return {}

    def num_episodes(self, split: str) -> int | None:
        """Episodes per epoch of ``split`` (``None``: the dataset's default)."""
        return {"train": self.train_episodes, "val": self.val_episodes, "test": self.test_episodes}[split]

    @property
    def test_set_labels(self) -> list[str] | None:
        """``["seed0", "seed1", ...]`` with ``test_seeds`` (one label per test episode set), else ``None``."""
        return None if self.test_seeds is None else [f"seed{s}" for s in self.test_seeds]

    def build_dataset(self, split: str, seed: int | None = None) -> EpisodicDataset:
        """The dataset of ``split`` with episode seed ``seed`` (default ``self.seed``); override for
        datasets that need more than ``dataset_kwargs``."""
        dataset = self.dataset_class(
            split=split,
            fold=self.fold,
            shot=self.shot,
            num_episodes=self.num_episodes(split),
            seed=self.seed if seed is None else seed,
            img_size=self.img_size,
            use_original_imgsize=self.use_original_imgsize and split != "train",
            **self.dataset_kwargs(),
        )
        # set, not passed: dataset classes need not take the argument (the base class handles it)
        dataset.support_label = getattr(self, "support_label", "mask")
        dataset.configure_fscs(getattr(self, "fscs", False), getattr(self, "way", 1))
        dataset.class_maps = getattr(self, "class_maps", False)
        dataset.configure_gfss(getattr(self, "gfss", False) and split == "test")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Build only the datasets ``stage`` needs (fit: train+val, validate: val, test/predict: test)."""
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: SPLITS,
        }.get(stage)
        if needed is None:
            raise ValueError(f"unknown stage {stage!r}")
        for split in needed:
            if split in self.datasets:
                continue
            if split == "test" and self.test_seeds is not None:
                sets = [self.build_dataset("test", seed) for seed in self.test_seeds]
                self.datasets["test"] = EpisodeSets(sets, self.test_set_labels or [])
            else:
                self.datasets[split] = self.build_dataset(split)

    # ----------------------------------------------------------------------------------- loaders
    def _check_trainer(self) -> None:
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return
        connector = getattr(trainer, "_accelerator_connector", None)
        if getattr(connector, "use_distributed_sampler", False):
            raise RuntimeError(
                f"{type(self).__name__} splits episodes over processes itself: run the Trainer with "
                "use_distributed_sampler=False (trainer.use_distributed_sampler: false in the config)"
            )

    def dataloader(self, split: str) -> DataLoader:
        """The dataloader of ``split``: an :class:`EpisodeSampler` (shuffled for train) and episode collation."""
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        self._check_trainer()
        dataset = self.datasets[split]
        train = split == "train"
        sampler = EpisodeSampler(len(dataset), shuffle=train, seed=self.seed)
        trainer = getattr(self, "trainer", None)
        if train and trainer is not None:
            # a resumed fit builds this loader (and its workers fetch their first episodes) before
            # Lightning calls set_epoch: start at the epoch the trainer resumes at
            sampler.set_epoch(trainer.current_epoch)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_episodes,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("test")
