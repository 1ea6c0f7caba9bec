"""The synthetic benchmark: classes and folds, episode schema, masks, determinism, epochs, speed."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from fss.data import SyntheticDataModule, SyntheticFSS
from fss.data.episode import check_episode
from fss.data.sampling import encode_key
from fss.data.synthetic import CLASS_NAMES, CLASS_TABLE, PATTERNS, SHAPES, render_scene

SIZE = 40  # small images keep the tests fast


def batches_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], Tensor) else a[k] == b[k] for k in a)


def all_batches(dm: SyntheticDataModule, split: str) -> list[dict]:
    return list(dm.dataloader(split))


# ------------------------------------------------------------------------------------ classes and folds
def test_classes_are_distinct_shape_pattern_pairs() -> None:
    assert SyntheticFSS.num_classes == len(CLASS_TABLE) == len(CLASS_NAMES) == 48
    assert len(set(CLASS_TABLE)) == 48 and len(set(CLASS_NAMES)) == 48
    assert {s for s, _ in CLASS_TABLE} == set(range(len(SHAPES)))
    assert {p for _, p in CLASS_TABLE} == set(range(len(PATTERNS)))


def test_folds_are_class_disjoint_and_cover_all_classes() -> None:
    folds = [SyntheticFSS.fold_class_ids(f) for f in range(4)]
    flat = [c for fold in folds for c in fold]
    assert sorted(flat) == list(range(48)) and all(len(f) == 12 for f in folds)
    for f, fold in enumerate(folds):
        assert fold == list(range(12 * f, 12 * f + 12))  # contiguous ids, like PASCAL-5i
        train = SyntheticFSS.split_class_ids("train", f)
        assert set(train) == set(range(48)) - set(fold)
        assert SyntheticFSS.split_class_ids("val", f) == SyntheticFSS.split_class_ids("test", f) == fold
        # each held-out fold mixes every pattern and every shape (unseen combinations of seen attributes)
        assert {CLASS_TABLE[c][1] for c in fold} == set(range(len(PATTERNS)))
        assert {CLASS_TABLE[c][0] for c in fold} == set(range(len(SHAPES)))


def test_datamodule_exposes_classes_without_setup() -> None:
    dm = SyntheticDataModule(fold=2)
    assert dm.num_classes == 48 and len(dm.class_names) == 48
    assert dm.eval_class_ids == list(range(24, 36))
    assert dm.datasets == {}


# ------------------------------------------------------------------------------------ episodes
@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("shot", [1, 5])
def test_episodes_follow_the_schema(split: str, shot: int) -> None:
    ds = SyntheticFSS(split, fold=1, shot=shot, num_episodes=6, img_size=SIZE)
    for i in range(len(ds)):
        ep = ds[i]
        check_episode(ep, shot=shot, img_size=SIZE)
        assert int(ep["class_id"]) in ds.class_ids
        assert ep["org_query_imsize"].tolist() == [SIZE, SIZE]
        assert set(torch.unique(ep["query_mask"]).tolist()) == {0, 1}  # target present, no ignore pixels
        assert bool((ep["support_masks"].flatten(1).sum(1) > 0).all())  # every support shows the class
        # ImageNet-normalised: roughly zero-centred, well beyond [0, 1]
        assert float(ep["query_img"].min()) < -0.5 and float(ep["query_img"].max()) > 0.5


def test_episode_classes_are_balanced_over_the_split() -> None:
    ds = SyntheticFSS("val", fold=3, num_episodes=24, img_size=32)
    counts = np.bincount([ds.class_ids[i % 12] for i in range(24)], minlength=48)
    assert [int(ds[i]["class_id"]) for i in range(24)] == [ds.class_ids[i % 12] for i in range(24)]
    assert set(counts[ds.class_ids].tolist()) == {2}


def test_masks_mark_the_target_class_only() -> None:
    rng = np.random.default_rng(0)
    with_distractor = 0
    for k in range(30):
        target = k % 48
        img, class_map = render_scene(rng, 64, target, min_distractors=1, max_distractors=3)
        assert img.shape == (3, 64, 64) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
        visible = set(np.unique(class_map).tolist()) - {-1}
        assert target in visible
        with_distractor += bool(visible - {target})
    assert with_distractor >= 27  # distractors (other classes) are visible in nearly every image
    # in the dataset, the mask is exactly the target's pixels: re-render episode 0's query
    ds = SyntheticFSS("val", fold=0, num_episodes=1, img_size=48)
    ep = ds[0]
    rng = ds.rng(0)
    _, class_map = render_scene(rng, 48, int(ep["class_id"]))
    assert torch.equal(
        ep["query_mask"], torch.from_numpy((class_map == int(ep["class_id"])).astype(np.int64))
    )
    assert bool(
        ((torch.from_numpy(class_map) >= 0) & (ep["query_mask"] == 0)).any()
    )  # distractor pixels are 0


def test_no_distractors_option() -> None:
    rng = np.random.default_rng(1)
    for target in range(0, 48, 7):
        _, class_map = render_scene(rng, 48, target, min_distractors=0, max_distractors=0)
        assert set(np.unique(class_map).tolist()) == {-1, target}


def test_use_original_imgsize_adds_the_original_mask() -> None:
    ds = SyntheticFSS("test", num_episodes=2, img_size=SIZE, use_original_imgsize=True)
    ep = ds[1]
    assert torch.equal(ep["org_query_mask"], ep["query_mask"])


# ------------------------------------------------------------------------------------ determinism
def test_episodes_are_pure_functions_of_the_key() -> None:
    a = SyntheticFSS("train", fold=0, shot=2, num_episodes=4, img_size=SIZE, seed=7)
    b = pickle.loads(pickle.dumps(a))  # what a spawned worker gets
    for key in (0, 3, encode_key(2, 1, 4)):
        assert batches_equal(a[key], b[key])
    assert not torch.equal(a[1]["query_img"], a[encode_key(1, 1, 4)]["query_img"])  # train: epoch matters
    val = SyntheticFSS("val", fold=0, num_episodes=4, img_size=SIZE)
    assert batches_equal(val[1], val[encode_key(5, 1, 4)])  # val: the epoch is ignored
    test = SyntheticFSS("test", fold=0, num_episodes=4, img_size=SIZE)
    assert not torch.equal(val[1]["query_img"], test[1]["query_img"])  # val and test draw different episodes
    other_seed = SyntheticFSS("val", fold=0, num_episodes=4, img_size=SIZE, seed=1)
    assert not torch.equal(val[1]["query_img"], other_seed[1]["query_img"])


def test_dataloader_output_does_not_depend_on_num_workers() -> None:
    kwargs = dict(img_size=32, shot=2, batch_size=3, train_episodes=7, val_episodes=5, seed=3)
    single = SyntheticDataModule(num_workers=0, **kwargs)
    multi = SyntheticDataModule(num_workers=2, **kwargs)
    for dm in (single, multi):
        dm.setup("fit")
    for split in ("train", "val"):
        a, b = all_batches(single, split), all_batches(multi, split)
        assert len(a) == len(b) == (3 if split == "train" else 2)
        assert all(batches_equal(x, y) for x, y in zip(a, b))


def test_epochs_change_train_episodes_but_not_val() -> None:
    dm = SyntheticDataModule(img_size=32, batch_size=4, train_episodes=4, val_episodes=4)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    first_train, first_val = next(iter(train)), next(iter(val))
    train.sampler.set_epoch(1)
    val.sampler.set_epoch(1)
    second_train, second_val = next(iter(train)), next(iter(val))
    assert batches_equal(first_val, second_val)
    assert not torch.equal(first_train["query_img"], second_train["query_img"])
    train.sampler.set_epoch(0)
    assert batches_equal(first_train, next(iter(train)))


class _Recorder(pl.LightningModule):
    """A stand-in model that remembers a fingerprint of every episode it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[tuple[str, int], list[float]] = {}

    def _record(self, stage: str, batch: dict) -> None:
        key = (stage, self.current_epoch)
        self.seen.setdefault(key, []).extend(batch["query_img"].flatten(1).sum(1).tolist())

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self._record("train", batch)
        return self.w * batch["query_img"].mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._record("val", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_sets_the_epoch_of_the_sampler(tmp_path) -> None:
    dm = SyntheticDataModule(img_size=32, batch_size=2, train_episodes=4, val_episodes=2)
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    seen = model.seen
    assert len(seen[("train", 0)]) == len(seen[("train", 1)]) == 4
    assert sorted(seen[("train", 0)]) != sorted(seen[("train", 1)])  # new training episodes each epoch
    assert seen[("val", 0)] == seen[("val", 1)]  # the same validation episodes


def test_setup_builds_only_the_needed_splits() -> None:
    dm = SyntheticDataModule(img_size=32)
    dm.setup("validate")
    assert set(dm.datasets) == {"val"}
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}
    assert len(dm.datasets["train"]) == 2000 and len(dm.datasets["val"]) == 1000


# ------------------------------------------------------------------------------------ errors and speed
def test_bad_arguments_name_the_option() -> None:
    with pytest.raises(ValueError, match="data.fold"):
        SyntheticDataModule(fold=4)
    with pytest.raises(ValueError, match="max_distractors"):
        SyntheticDataModule(min_distractors=3, max_distractors=1)
    with pytest.raises(ValueError, match="img_size"):
        SyntheticDataModule(img_size=16)
    with pytest.raises(ValueError, match="eval_batch_size=1"):
        SyntheticDataModule(use_original_imgsize=True, batch_size=4)
    with pytest.raises(ValueError, match="unknown split"):
        SyntheticFSS("trn")


def test_rendering_is_fast() -> None:
    ds = SyntheticFSS("train", shot=1, num_episodes=20, img_size=96)
    ds[0]
    start = time.process_time()
    for i in range(20):
        ds[i]
    per_episode = (time.process_time() - start) / 20
    assert per_episode < 0.05, f"a 96x96 1-shot episode took {per_episode * 1000:.1f} ms of CPU"


def test_episode_counts_null_means_dataset_default_and_zero_is_an_error():
    dm = SyntheticDataModule(img_size=32, val_episodes=None, test_episodes=None)
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 1000  # SyntheticFSS.default_num_episodes
    for option in ("train_episodes", "val_episodes", "test_episodes"):
        with pytest.raises(ValueError, match=f"data.{option} must be >= 1"):
            SyntheticDataModule(**{option: 0})


def test_class_maps_hold_the_query_classes() -> None:
    ds = SyntheticFSS("train", fold=0, shot=1, num_episodes=4, img_size=48)
    ds.class_maps = True
    ep = ds.episode(1)
    classes, c = ep["query_classes"], int(ep["class_id"])
    assert torch.equal(classes == c + 1, ep["query_mask"] == 1)
    assert len(classes.unique()) >= 3  # background, the class, distractors
    ds.class_maps = False
    assert "query_classes" not in ds.episode(1)
