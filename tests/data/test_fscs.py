"""FS-CS episodes (N-way K-shot, any subset of the ways in the query) on the synthetic benchmark and on
tiny PASCAL-5i / COCO-20i / FSS-1000 trees: the sampling rule, targets, determinism, class tags, errors."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from fss.data import COCO20iDataModule, FSS1000DataModule, PascalDataModule, SyntheticDataModule
from fss.data.episode import check_episode, collate_episodes
from fss.data.fscs import (
    check_fscs_episode,
    class_presence,
    draw_support_classes,
    merge_query_targets,
    support_class_probabilities,
)
from fss.data.transforms import mask_to_bbox
from tests.data.fixtures import make_coco, make_fss1000, make_pascal

SIZE = 32


def episodes_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], Tensor) else a[k] == b[k] for k in a)


def synthetic(split: str = "val", **kwargs) -> SyntheticDataModule:
    kwargs = {"img_size": SIZE, "fscs": True, "val_episodes": 24, "test_episodes": 24, **kwargs}
    dm = SyntheticDataModule(**kwargs)
    dm.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    return dm


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pascal(tmp_path_factory.mktemp("pascal"))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"))


# ------------------------------------------------------------------------------ the sampling rule
def test_support_class_probabilities_favour_the_query_class() -> None:
    p = support_class_probabilities([3, 7, 9, 11, 12], 9)
    assert p.tolist() == [0.125, 0.125, 0.5, 0.125, 0.125]
    assert support_class_probabilities([4], 4).tolist() == [1.0]
    with pytest.raises(ValueError, match="not one of the split's classes"):
        support_class_probabilities([1, 2], 3)


def test_draws_follow_the_reference_distribution() -> None:
    """Distinct classes; the query class is a way with probability 1/2 (1-way) and 11/14 (2-way of 5,
    NumPy's weighted sampling without replacement, which the reference's legacy choice shares)."""
    classes = [0, 1, 2, 3, 4]
    rng = np.random.default_rng(0)
    one = [draw_support_classes(rng, classes, 2, 1) for _ in range(4000)]
    assert np.mean([c == [2] for c in one]) == pytest.approx(0.5, abs=0.025)
    two = [draw_support_classes(rng, classes, 2, 2) for _ in range(4000)]
    assert all(len(set(c)) == 2 and set(c) <= set(classes) for c in two)
    assert np.mean([2 in c for c in two]) == pytest.approx(11 / 14, abs=0.02)
    legacy = np.random.RandomState(0)  # the reference's np.random.choice
    p = support_class_probabilities(classes, 2)
    assert np.mean(
        [2 in legacy.choice(classes, 2, p=p, replace=False) for _ in range(4000)]
    ) == pytest.approx(11 / 14, abs=0.02)
    assert sorted(draw_support_classes(rng, classes, 0, 5)) == classes
    with pytest.raises(ValueError, match="way <= 5"):
        draw_support_classes(rng, classes, 0, 6)


def test_merge_query_targets_and_presence() -> None:
    a = np.array([[1, 0, 255], [0, 0, 255]], dtype=np.uint8)
    b = np.array([[1, 1, 255], [0, 0, 255]], dtype=np.uint8)
    c = np.zeros((2, 3), dtype=np.uint8)
    merged = merge_query_targets([a, b, c])
    assert merged.tolist() == [[1, 2, 255], [0, 0, 255]]  # the first way wins an overlap
    assert class_presence(merged, 3) == [True, True, False]


# ------------------------------------------------------------------------------ synthetic episodes
@pytest.mark.parametrize(("way", "shot"), [(1, 1), (2, 3), (3, 1)])
def test_synthetic_episodes_follow_the_schema(way: int, shot: int) -> None:
    dm = synthetic(way=way, shot=shot)
    ds = dm.datasets["val"]
    for i in range(0, 24, 5):
        ep = ds.episode(i)
        check_fscs_episode(ep, way=way, shot=shot, img_size=SIZE)
        query_class = ds.class_ids[i % len(ds.class_ids)]
        classes = ep["support_classes"].tolist()
        if query_class in classes:  # the query always shows "its" class
            assert bool(ep["query_class_presence"][classes.index(query_class)])
        for n in range(way):  # presence is what the mask shows; supports show their class
            assert bool(ep["query_class_presence"][n]) == bool((ep["query_mask"] == n + 1).any())
            assert bool((ep["support_masks"][n].flatten(1).amax(1) == 1).all())
    batch = next(iter(dm.val_dataloader()))
    assert batch["support_imgs"].shape == (8, way, shot, 3, SIZE, SIZE)
    assert batch["query_class_presence"].shape == (8, way)
    assert len(batch["support_names"]) == 8 and len(batch["support_names"][0]) == way
    assert len(batch["support_names"][0][0]) == shot


def test_the_query_holds_none_of_the_ways_often_enough() -> None:
    """1-way: the support class is the query's half of the time, and otherwise rarely shown."""
    ds = synthetic(val_episodes=240).datasets["val"]
    presence = [bool(ds.episode(i)["query_class_presence"][0]) for i in range(240)]
    assert np.mean(presence) == pytest.approx(0.5, abs=0.08)


def test_synthetic_fscs_episodes_are_pure_functions_of_the_key() -> None:
    a, b = synthetic(way=2).datasets["val"], synthetic(way=2).datasets["val"]
    assert episodes_equal(a.episode(3), b.episode(3))
    assert not torch.equal(a.episode(3)["query_img"], a.episode(4)["query_img"])
    test = synthetic("test", way=2).datasets["test"]
    assert not torch.equal(a.episode(3)["query_img"], test.episode(3)["query_img"])


def test_fscs_batches_do_not_depend_on_num_workers() -> None:
    kwargs = dict(way=2, shot=2, batch_size=3, train_episodes=7, val_episodes=5, seed=3)
    single, multi = synthetic("train", num_workers=0, **kwargs), synthetic("train", num_workers=2, **kwargs)
    for split in ("train", "val"):
        a, b = list(single.dataloader(split)), list(multi.dataloader(split))
        assert len(a) == len(b) and all(episodes_equal(x, y) for x, y in zip(a, b))


def test_fs_s_episodes_are_unchanged_by_the_fscs_mode() -> None:
    dm = SyntheticDataModule(img_size=SIZE, val_episodes=4)
    dm.setup("validate")
    ds = dm.datasets["val"]
    before = ds.episode(2)
    check_episode(before, shot=1, img_size=SIZE)
    ds.configure_fscs(True, 2)
    assert "query_class_presence" in ds.episode(2)
    ds.configure_fscs(False, 1)
    assert episodes_equal(before, ds.episode(2))


# ------------------------------------------------------------------------------ support labels
def test_tag_and_bbox_support_labels_apply_to_every_way() -> None:
    kwargs = dict(way=2, shot=2, val_episodes=2)
    plain = synthetic(**kwargs).datasets["val"].episode(1)
    tagged = synthetic(support_label="tag", **kwargs).datasets["val"].episode(1)
    boxed = synthetic(support_label="bbox", **kwargs).datasets["val"].episode(1)
    assert torch.equal(tagged["support_masks"], torch.ones_like(plain["support_masks"]))
    assert torch.equal(boxed["support_masks"], mask_to_bbox(plain["support_masks"]))
    for key in ("query_img", "query_mask", "support_imgs", "query_class_presence"):
        assert torch.equal(tagged[key], plain[key]) and torch.equal(boxed[key], plain[key])


# ------------------------------------------------------------------------------ options
def test_bad_options_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"data.way=2 needs data.fscs: true"):
        SyntheticDataModule(way=2)
    with pytest.raises(ValueError, match="data.way must be >= 1"):
        SyntheticDataModule(fscs=True, way=0)
    dm = SyntheticDataModule(fscs=True, way=13, img_size=SIZE)
    with pytest.raises(ValueError, match=r"data.way=13 but the val split of fold 0 has only 12"):
        dm.setup("validate")


# ------------------------------------------------------------------------------ PASCAL-5i
def raw_label(voc_root: Path, name: str) -> np.ndarray:
    return np.array(Image.open(voc_root / "VOC2012" / "SegmentationClassAug" / f"{name}.png"))


def expected_target(label: np.ndarray, classes: list[int]) -> torch.Tensor:
    out = np.where(label == 255, 255, 0)
    for n, c in enumerate(classes):
        out[label == c + 1] = n + 1
    return torch.from_numpy(out.astype(np.int64))


def test_pascal_fscs_episodes_match_the_label_maps(voc_root: Path) -> None:
    kwargs = dict(root=str(voc_root), img_size=SIZE, val_episodes=20, test_episodes=20, eval_batch_size=1)
    fss = PascalDataModule(**kwargs)
    dm = PascalDataModule(fscs=True, way=2, shot=2, use_original_imgsize=True, **kwargs)
    fss.setup("test")
    dm.setup("test")
    for i in range(0, 20, 3):
        ep = dm.datasets["test"].episode(i)
        check_fscs_episode(ep, way=2, shot=2, img_size=SIZE)
        classes = ep["support_classes"].tolist()
        assert set(classes) <= set(range(5))
        assert ep["query_name"] == fss.datasets["test"].episode(i)["query_name"]  # the same query as FS-S
        label = raw_label(voc_root, ep["query_name"])
        target = expected_target(label, classes)
        assert torch.equal(ep["org_query_mask"], target)
        assert ep["query_class_presence"].tolist() == [bool((label == c + 1).any()) for c in classes]
        for n, names in enumerate(ep["support_names"]):
            assert ep["query_name"] not in names and len(set(names)) == 2
            assert all(bool((raw_label(voc_root, name) == classes[n] + 1).any()) for name in names)


def test_pascal_fscs_training_queries_may_show_several_ways(voc_root: Path) -> None:
    dm = PascalDataModule(root=str(voc_root), img_size=SIZE, fscs=True, way=2, augment=True)
    dm.setup("fit")
    ds = dm.datasets["train"]
    presence = [ds.episode(i)["query_class_presence"].tolist() for i in range(len(ds))]
    assert [True, True] in presence and [False, False] in presence
    ep = ds.episode(1, epoch=1)
    check_fscs_episode(ep, way=2, shot=1, img_size=SIZE)


def test_pascal_way_above_the_fold_size_is_an_error(voc_root: Path) -> None:
    dm = PascalDataModule(root=str(voc_root), img_size=SIZE, fscs=True, way=6)
    with pytest.raises(ValueError, match=r"data.way=6 but the test split of fold 0 has only 5"):
        dm.setup("test")


# ------------------------------------------------------------------------------ COCO-20i, FSS-1000
def test_coco_fscs_episodes_agree_between_json_and_png_masks(coco_root: Path) -> None:
    kwargs = dict(root=str(coco_root), img_size=SIZE, fscs=True, way=2, test_episodes=12)
    json_dm, png_dm = (
        COCO20iDataModule(mask_source="json", **kwargs),
        COCO20iDataModule(mask_source="png", **kwargs),
    )
    json_dm.setup("test")
    png_dm.setup("test")
    seen_both = False
    for i in range(12):
        a, b = json_dm.datasets["test"].episode(i), png_dm.datasets["test"].episode(i)
        check_fscs_episode(a, way=2, shot=1, img_size=SIZE)
        assert episodes_equal(a, b)
        seen_both |= bool(a["query_class_presence"].all())
    assert seen_both  # the fixture's images hold two classes of fold 0


def test_fss1000_fscs_queries_show_only_their_own_class(tmp_path: Path) -> None:
    root = make_fss1000(tmp_path / "fss", n_classes=12)
    dm = FSS1000DataModule(root=str(root), img_size=SIZE, fscs=True, way=2, shot=1)
    dm.setup("test")
    ds = dm.datasets["test"]
    for i in range(len(ds)):
        ep = ds.episode(i)
        check_fscs_episode(ep, way=2, shot=1, img_size=SIZE)
        query_class = ds.pick_query(np.random.default_rng(0), i)[1]
        names = [ds.class_names[c] for c in ep["support_classes"].tolist()]
        assert ep["query_class_presence"].tolist() == [
            c == query_class for c in ep["support_classes"].tolist()
        ]
        assert all(n.startswith(f"{cls}/") for cls, row in zip(names, ep["support_names"]) for n in row)
    assert collate_episodes([ds.episode(0), ds.episode(1)])["support_classes"].shape == (2, 2)


# ------------------------------------------------------------------------------ the iFSL loaders
def reference_loader(module: str):
    """The iFSL ``fs-cs/data/<module>.py`` of the clone at ``$FSS_IFSL_REF`` (or skip)."""
    root = os.environ.get("FSS_IFSL_REF")
    if not root:
        pytest.skip("set FSS_IFSL_REF to a clone of github.com/dahyun-kang/ifsl to compare with its loaders")
    path = Path(root) / "fs-cs" / "data" / f"{module}.py"
    if not path.is_file():
        pytest.skip(f"FSS_IFSL_REF={root} has no fs-cs/data/{module}.py")
    spec = importlib.util.spec_from_file_location(f"ifsl_fscs_{module}", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def compare_with_reference(ours: dict, ref: dict, size: int) -> None:
    """Our episode against the reference's on the same (query, supports, classes): the query mask at
    the original size (the reference: 255 -> 0 plus a 0/1 boundary map), presence, support masks."""
    org = ours["org_query_mask"]
    assert torch.equal(org.masked_fill(org == 255, 0).float(), ref["query_mask"])
    if "query_ignore_idx" in ref:
        assert torch.equal((org == 255).float(), ref["query_ignore_idx"])
    assert torch.equal(ours["query_class_presence"], ref["query_class_presence"])
    ref_support = (ref["support_masks"] > 0).float()  # the reference labels way n's mask n + 1
    assert ref_support.shape[-2:] == (size, size)
    assert torch.equal(ours["support_masks"], ref_support)


def test_targets_match_the_reference_pascal_loader(voc_root: Path) -> None:
    pascal = reference_loader("pascal")
    dm = PascalDataModule(
        root=str(voc_root), img_size=SIZE, fscs=True, way=2, shot=2, test_episodes=20, eval_batch_size=1,
        use_original_imgsize=True,
    )  # fmt: skip
    dm.setup("test")
    ours = dm.datasets["test"]

    class Reference(pascal.DatasetPASCAL):
        def build_img_metadata(self):  # our list instead of the reference's split files
            return [[name, c + 1] for name, c in ours.pairs]

    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])
    ref = Reference(str(voc_root), fold=0, transform=transform, split="val", way=2, shot=2)
    for i in range(20):
        episode = ours.episode(i)
        classes = [c + 1 for c in episode["support_classes"].tolist()]
        ref.sample_episode = lambda idx, e=episode, c=classes: (e["query_name"], e["support_names"], c)
        compare_with_reference(episode, ref[i], SIZE)


def test_targets_match_the_reference_coco_loader(coco_root: Path) -> None:
    coco = reference_loader("coco")
    dm = COCO20iDataModule(
        root=str(coco_root), img_size=SIZE, fscs=True, way=2, test_episodes=12, eval_batch_size=1,
        mask_source="png", use_original_imgsize=True,
    )  # fmt: skip
    dm.setup("test")
    ours = dm.datasets["test"]

    class Reference(coco.DatasetCOCO):
        def build_img_metadata_classwise(self):  # our index instead of the reference's pickles
            return {c + 1: [f"val2014/{stem}.jpg" for stem in items] for c, items in ours.class_items.items()}

    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])
    ref = Reference(str(coco_root), fold=0, transform=transform, split="val", way=2, shot=1)
    ref.base_path = str(coco_root)
    for i in range(12):
        episode = ours.episode(i)
        classes = [c + 1 for c in episode["support_classes"].tolist()]
        names = [[f"val2014/{n}.jpg" for n in row] for row in episode["support_names"]]
        ref.sample_episode = lambda idx, e=episode, n=names, c=classes: (
            f"val2014/{e['query_name']}.jpg",
            n,
            c,
        )
        compare_with_reference(episode, ref[i], SIZE)
