"""Deterministic episode seeding and the episode sampler.

An episode is a pure function of ``(seed, split, fold, index, epoch)``: the dataset draws every
random choice of episode ``index`` from :func:`episode_rng`, a fresh NumPy generator seeded with
``[seed, split_code, fold, epoch, index]``. Nothing depends on the global RNG, the worker count or
the order in which workers fetch items, so the 1000 validation episodes of a fold are the same
on every machine and in every run.

Training episodes change each epoch; validation and test episodes never do. The epoch reaches the
dataset through the *key* the sampler yields (:func:`encode_key`): ``key = epoch * num_episodes +
index``. Lightning calls :meth:`EpisodeSampler.set_epoch` on the dataloader's sampler at the start
of every epoch in the main process, the sampler folds the epoch into the keys, and the dataset in a
worker process decodes them (:func:`decode_key`) without holding any state. A plain
``dataset[i]`` with ``0 <= i < len(dataset)`` is episode ``i`` of epoch 0.

Distributed runs: :class:`EpisodeSampler` splits the episodes over ``torch.distributed`` ranks
itself. The Trainer must therefore run with ``use_distributed_sampler=False``, otherwise Lightning
wraps the sampler in its own distributed sampler and every rank would see only 1/world_size of its
share (``EpisodicDataModule`` raises an error in that case).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

#: the split names and their codes in the seed; ``trn`` (the reference code's name) is not accepted
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}

#: a tag that keeps the sampler's shuffling stream apart from every episode stream
_SHUFFLE_TAG = 0x5348


def split_code(split: str) -> int:
    """The integer code of ``split`` (``train`` 0, ``val`` 1, ``test`` 2)."""
    try:
        return SPLIT_CODES[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLIT_CODES)}") from None


def episode_rng(seed: int, split: str, fold: int, index: int, epoch: int = 0) -> np.random.Generator:
    """The random generator of one episode: ``default_rng([seed, split_code, fold, epoch, index])``.

    A pure function: the same arguments always give a generator in the same state. All arguments must
    be non-negative integers.
    """
    entropy = [int(seed), split_code(split), int(fold), int(epoch), int(index)]
    if min(entropy) < 0:
        raise ValueError(f"episode_rng needs non-negative seed, fold, epoch and index, got {entropy}")
    return np.random.default_rng(entropy)


def encode_key(epoch: int, index: int, num_episodes: int) -> int:
    """The dataset key of episode ``index`` in ``epoch``: ``epoch * num_episodes + index``."""
    if not 0 <= index < num_episodes or epoch < 0:
        raise ValueError(f"episode index {index} / epoch {epoch} out of range for {num_episodes} episodes")
    return epoch * num_episodes + index


def decode_key(key: int, num_episodes: int) -> tuple[int, int]:
    """Inverse of :func:`encode_key`: ``(epoch, index)``."""
    key = int(key)
    if key < 0:
        raise IndexError(f"episode key {key} is negative")
    epoch, index = divmod(key, num_episodes)
    return epoch, index


def distributed_context(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the given values, else those of ``torch.distributed``, else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size to EpisodeSampler, or neither")
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    return rank, world_size


class EpisodeSampler(Sampler[int]):
    """Yields episode keys (epoch and index, see :func:`encode_key`) for one process.

    Args:
        num_episodes: episodes per epoch (the dataset's length).
        shuffle: visit the episodes in a random order, drawn from ``(seed, epoch)`` (the same order on
            every rank). Used for training.
        seed: seed of the shuffling order.
        drop_last: with several processes, drop the last ``num_episodes % world_size`` episodes (of the
            shuffled order) so that every rank gets the same number: needed for training, where ranks
            step together. Without it (evaluation) rank ``r`` gets ``order[r::world_size]``: every
            episode exactly once over all ranks, no padding, no duplicates, counts differing by at most
            one. Defaults to ``shuffle``.
        rank, world_size: this process's place among ``world_size`` processes; by default read from
            ``torch.distributed`` when it is initialised (at iteration time), else a single process.
    """

    def __init__(
        self,
        num_episodes: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if num_episodes < 1:
            raise ValueError(f"EpisodeSampler needs num_episodes >= 1, got {num_episodes}")
        if seed < 0:
            raise ValueError(f"EpisodeSampler needs a non-negative seed, got {seed}")
        distributed_context(rank, world_size)  # validate early
        self.num_episodes = num_episodes
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = shuffle if drop_last is None else drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose episodes (and order) the next iteration yields (Lightning calls this)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        """The episode indices (not keys) of this process for the current epoch, in order."""
        rank, world_size = distributed_context(self.rank, self.world_size)
        if self.shuffle:
            order = np.random.default_rng([self.seed, _SHUFFLE_TAG, self.epoch]).permutation(
                self.num_episodes
            )
        else:
            order = np.arange(self.num_episodes)
        if self.drop_last:
            usable = (self.num_episodes // world_size) * world_size
            if usable == 0:
                raise ValueError(
                    f"{self.num_episodes} episodes cannot be split evenly over {world_size} processes: "
                    "raise the number of episodes"
                )
            order = order[:usable]
        return order[rank::world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, n = self.epoch, self.num_episodes
        return iter([encode_key(epoch, i, n) for i in self.indices()])

    def __len__(self) -> int:
        rank, world_size = distributed_context(self.rank, self.world_size)
        if self.drop_last:
            return self.num_episodes // world_size
        return len(range(rank, self.num_episodes, world_size))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_episodes={self.num_episodes}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})"
        )
