"""Episode seeding, key encoding and the episode sampler (shuffling, epochs, distributed splitting)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fss.data import sampling
from fss.data.episode import check_episode, collate_episodes
from fss.data.sampling import EpisodeSampler, decode_key, encode_key, episode_rng
from fss.data.synthetic import SyntheticDataModule


def draws(rng: np.random.Generator) -> list[int]:
    return rng.integers(0, 2**31, size=4).tolist()


def test_episode_rng_is_a_pure_function_of_its_arguments() -> None:
    base = dict(seed=3, split="val", fold=2, index=17, epoch=0)
    assert draws(episode_rng(**base)) == draws(episode_rng(**base))
    seen = {tuple(draws(episode_rng(**base)))}
    for key, value in [("seed", 4), ("split", "test"), ("fold", 1), ("index", 18), ("epoch", 1)]:
        seen.add(tuple(draws(episode_rng(**{**base, key: value}))))
    assert len(seen) == 6  # every argument changes the stream
    # index 0 / epoch 0 (trailing zeros) do not collide with other keys either
    assert draws(episode_rng(0, "train", 0, 0, 0)) != draws(episode_rng(0, "train", 0, 1, 0))
    assert draws(episode_rng(0, "train", 0, 0, 0)) != draws(episode_rng(0, "val", 0, 0, 0))


def test_episode_rng_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown split 'trn'"):
        episode_rng(0, "trn", 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        episode_rng(-1, "train", 0, 0)


def test_keys_round_trip() -> None:
    for epoch, index in [(0, 0), (0, 9), (3, 4), (12, 9)]:
        key = encode_key(epoch, index, 10)
        assert decode_key(key, 10) == (epoch, index)
    assert encode_key(2, 3, 10) == 23
    with pytest.raises(ValueError):
        encode_key(0, 10, 10)
    with pytest.raises(IndexError):
        decode_key(-1, 10)


def test_sequential_sampler_yields_epoch_keys() -> None:
    sampler = EpisodeSampler(5)
    assert list(sampler) == [0, 1, 2, 3, 4]
    sampler.set_epoch(3)
    assert list(sampler) == [15, 16, 17, 18, 19]
    assert [decode_key(k, 5) for k in sampler] == [(3, i) for i in range(5)]
    assert len(sampler) == 5


def test_shuffled_order_depends_on_seed_and_epoch_only() -> None:
    a, b = EpisodeSampler(50, shuffle=True, seed=1), EpisodeSampler(50, shuffle=True, seed=1)
    assert list(a) == list(b)
    assert sorted(a.indices()) == list(range(50))
    first = a.indices()
    a.set_epoch(1)
    assert a.indices() != first and sorted(a.indices()) == list(range(50))
    assert EpisodeSampler(50, shuffle=True, seed=2).indices() != first


@pytest.mark.parametrize("num_episodes", [1000, 10, 7, 3])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_eval_split_covers_every_episode_exactly_once(num_episodes: int, world_size: int) -> None:
    parts = [EpisodeSampler(num_episodes, rank=r, world_size=world_size).indices() for r in range(world_size)]
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(num_episodes))  # complete, no duplicates, no padding
    lengths = [len(EpisodeSampler(num_episodes, rank=r, world_size=world_size)) for r in range(world_size)]
    assert lengths == [len(p) for p in parts]
    assert max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_train_split_gives_every_rank_the_same_count(world_size: int) -> None:
    n = 103
    samplers = [
        EpisodeSampler(n, shuffle=True, seed=5, rank=r, world_size=world_size) for r in range(world_size)
    ]
    for s in samplers:
        s.set_epoch(2)
    parts = [s.indices() for s in samplers]
    assert {len(p) for p in parts} == {n // world_size}
    assert all(len(s) == n // world_size for s in samplers)
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == len(flat) == (n // world_size) * world_size  # disjoint
    # all ranks cut the same shuffled order: together they hold its first len(flat) episodes
    order = np.random.default_rng([5, sampling._SHUFFLE_TAG, 2]).permutation(n)[: len(flat)]
    assert sorted(flat) == sorted(order.tolist())


def test_train_split_with_too_few_episodes_raises() -> None:
    with pytest.raises(ValueError, match="cannot be split evenly"):
        EpisodeSampler(2, shuffle=True, rank=0, world_size=3).indices()


def test_sampler_reads_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling.dist, "is_available", lambda: True)
    monkeypatch.setattr(sampling.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(sampling.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(sampling.dist, "get_world_size", lambda: 3)
    sampler = EpisodeSampler(10)
    assert sampler.indices() == [1, 4, 7]
    assert len(sampler) == 3
    assert list(sampler) == [1, 4, 7]


def test_sampler_argument_errors() -> None:
    with pytest.raises(ValueError, match="both rank and world_size"):
        EpisodeSampler(10, rank=0)
    with pytest.raises(ValueError, match="invalid rank"):
        EpisodeSampler(10, rank=3, world_size=3)
    with pytest.raises(ValueError, match="num_episodes"):
        EpisodeSampler(0)


def test_collate_keeps_names_per_episode() -> None:
    dm = SyntheticDataModule(img_size=32, shot=2, val_episodes=3)
    dm.setup("validate")
    episodes = [dm.datasets["val"][i] for i in range(3)]
    for ep in episodes:
        check_episode(ep, shot=2, img_size=32)
    batch = collate_episodes(episodes)
    assert batch["query_img"].shape == (3, 3, 32, 32) and batch["support_masks"].shape == (3, 2, 32, 32)
    assert batch["class_id"].shape == (3,) and batch["org_query_imsize"].tolist() == [[32, 32]] * 3
    assert batch["query_name"] == [ep["query_name"] for ep in episodes]
    assert batch["support_names"] == [ep["support_names"] for ep in episodes]
    # sizes that differ stay a list (org_query_mask with use_original_imgsize)
    ragged = [
        dict(episodes[0], org_query_mask=torch.zeros(4, 5)),
        dict(episodes[1], org_query_mask=torch.zeros(6, 5)),
    ]
    assert isinstance(collate_episodes(ragged)["org_query_mask"], list)


def test_datamodule_refuses_lightnings_distributed_sampler() -> None:
    dm = SyntheticDataModule(img_size=32, val_episodes=4)
    dm.trainer = SimpleNamespace(
        world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        dm.val_dataloader()
    dm.trainer = SimpleNamespace(
        world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=False)
    )
    assert isinstance(dm.val_dataloader().sampler, EpisodeSampler)
