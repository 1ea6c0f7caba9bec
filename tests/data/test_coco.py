"""COCO-20i data module on a tiny COCO 2014 tree: folds, JSON vs PNG masks, crowd, determinism, errors."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fss.data.coco import COCO20iDataModule, COCO20iDataset, coco_class_ids, coco_fold_class_ids
from fss.data.common import DatasetLayoutError
from fss.data.episode import check_episode
from tests.data.fixtures import make_coco

CLASSES = (0, 1, 4, 5, 20)  # person, bicycle, airplane, bus, elephant


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"), classes=CLASSES)


def dataset(root: Path, split: str = "test", **kwargs) -> COCO20iDataset:
    kwargs.setdefault("img_size", 32)
    kwargs.setdefault("num_episodes", 12 if split != "train" else None)
    return COCO20iDataset(root, split, **kwargs)


# --------------------------------------------------------------------------------------------- classes
def test_interleaved_and_contiguous_folds() -> None:
    assert coco_fold_class_ids(0, "interleaved") == list(range(0, 80, 4))  # 1-based 1, 5, ..., 77
    assert coco_fold_class_ids(3, "interleaved")[-1] == 79
    assert coco_fold_class_ids(1, "contiguous") == list(range(20, 40))  # 1-based 21..40
    for split in ("interleaved", "contiguous"):
        folds = [set(coco_fold_class_ids(f, split)) for f in range(4)]
        assert set().union(*folds) == set(range(80)) and sum(map(len, folds)) == 80
        assert set(coco_class_ids("train", 2, split)) == set(range(80)) - folds[2]
    with pytest.raises(ValueError, match="interleaved"):
        coco_fold_class_ids(0, "random")  # type: ignore[arg-type]


def test_fold_classes_select_the_fixture_classes(coco_root: Path) -> None:
    assert dataset(coco_root, fold=0).usable_class_ids == [0, 4, 20]
    assert dataset(coco_root, fold=1).usable_class_ids == [1, 5]
    assert dataset(coco_root, fold=0, class_split="contiguous").usable_class_ids == [0, 1, 4, 5]
    assert dataset(coco_root, fold=1, class_split="contiguous").usable_class_ids == [20]
    train = dataset(coco_root, "train", fold=0)
    assert train.usable_class_ids == [1, 5] and train.images == "train2014"
    assert all(stem.startswith("COCO_train2014_") for stem in train.items())
    assert len(train) == len(train.items())  # one epoch = as many episodes as training images


# ------------------------------------------------------------------------------------------- masks
def test_json_and_png_sources_give_the_same_index_and_masks(coco_root: Path) -> None:
    for fold in (0, 1):
        js = dataset(coco_root, fold=fold, mask_source="json")
        png = dataset(coco_root, fold=fold, mask_source="png")
        assert js.class_items == png.class_items and js.usable_class_ids == png.usable_class_ids
        for c in js.usable_class_ids:
            for stem in js.class_items[c]:
                a, b = js.load_target(stem, c, True), png.load_target(stem, c, True)
                assert np.array_equal(a, b) and a.sum() > 0
        for i in range(6):
            ea, eb = js.episode(i), png.episode(i)
            assert ea["query_name"] == eb["query_name"] and torch.equal(ea["query_mask"], eb["query_mask"])
            assert torch.equal(ea["support_masks"], eb["support_masks"])


def test_class_mask_is_the_union_of_its_instances(coco_root: Path) -> None:
    ds = dataset(coco_root, fold=0, mask_source="json")
    stem = "COCO_val2014_000000000505"  # k = 5: person polygon (top-left), person RLE (bottom-left), airplane
    person = ds.load_target(stem, 0, True)
    assert person[:20, :24].sum() > 0 and person[20:, :24].sum() > 0  # both instances of the class
    assert person[:, 24:].sum() == 0  # the airplane polygon (top-right) is not in the person mask
    airplane = ds.load_target(stem, 4, True)
    assert airplane[:, 24:].sum() > 0 and airplane[:, :24].sum() == 0


def test_crowd_regions_included_or_ignored(coco_root: Path) -> None:
    stem, c = "COCO_val2014_000000000500", CLASSES[0]  # k = 0 has a crowd region in the bottom-right cell
    include = dataset(coco_root, fold=0, mask_source="json").load_target(stem, c, True)
    ignore_ds = dataset(coco_root, fold=0, mask_source="json", crowd="ignore", use_original_imgsize=True)
    ignore = ignore_ds.load_target(stem, c, True)
    crowd_cell = (slice(20, 40), slice(24, 48))
    assert include[crowd_cell].max() == 1 and 255 not in include
    assert ignore[crowd_cell].max() == 255 and 1 not in ignore[crowd_cell]
    assert np.array_equal(ignore == 1, (include == 1) & (ignore != 255))
    for i in range(12):  # in episodes: 255 stays in the query mask, becomes 0 in the supports
        ep = ignore_ds.episode(i)
        check_episode(ep, shot=1, img_size=32)
        if ep["query_name"] == stem and int(ep["class_id"]) == c:
            assert (ep["org_query_mask"] == 255).any()


def test_mask_source_auto_prefers_png_then_json(coco_root: Path, tmp_path: Path) -> None:
    assert dataset(coco_root, fold=0).mask_source == "png"
    json_only = make_coco(tmp_path / "json_only", classes=CLASSES, n_train=4, n_val=8, write_png=False)
    ds = dataset(json_only, fold=0)
    assert ds.mask_source == "json"
    with pytest.raises(DatasetLayoutError, match="mask_source=png"):
        dataset(json_only, fold=0, mask_source="png")


# ---------------------------------------------------------------------------------------- episodes
def test_episodes_are_deterministic_and_balanced_over_classes(coco_root: Path) -> None:
    ds = dataset(coco_root, fold=0, shot=2, num_episodes=60)
    again = dataset(coco_root, fold=0, shot=2, num_episodes=60)
    eps = [ds.episode(i) for i in range(60)]
    for i in (0, 17, 59):
        assert eps[i]["support_names"] == again.episode(i)["support_names"]
    counts = np.bincount([int(e["class_id"]) for e in eps], minlength=21)[[0, 4, 20]]
    assert counts.min() >= 10  # classes drawn uniformly
    for e in eps:
        assert e["query_name"] not in e["support_names"] and len(set(e["support_names"])) == 2


def test_test_episodes_do_not_depend_on_worker_count(coco_root: Path) -> None:
    def batches(num_workers: int) -> list[dict]:
        dm = COCO20iDataModule(
            root=str(coco_root),
            fold=0,
            img_size=32,
            eval_batch_size=3,
            num_workers=num_workers,
            test_episodes=9,
        )
        dm.setup("test")
        return list(dm.test_dataloader())

    a, b = batches(0), batches(2)
    assert [x["query_name"] for x in a] == [x["query_name"] for x in b]
    assert all(torch.equal(x["query_img"], y["query_img"]) for x, y in zip(a, b))


def test_split_dir_pickles(coco_root: Path, tmp_path: Path) -> None:
    lists = {c: [] for c in range(80)}
    lists[4] = ["val2014/COCO_val2014_000000000502.jpg", "val2014/COCO_val2014_000000000507.jpg"]
    (tmp_path / "val").mkdir()
    with open(tmp_path / "val" / "fold0.pkl", "wb") as f:
        pickle.dump(lists, f)
    ds = dataset(coco_root, fold=0, split_dir=tmp_path)
    assert ds.usable_class_ids == [4]
    assert ds.class_items[4] == ["COCO_val2014_000000000502", "COCO_val2014_000000000507"]
    with pytest.raises(DatasetLayoutError, match="fold1.pkl"):
        dataset(coco_root, fold=1, split_dir=tmp_path)


def test_datamodule_properties(coco_root: Path) -> None:
    dm = COCO20iDataModule(root=str(coco_root), fold=2, class_split="contiguous")
    assert dm.num_classes == 80 and dm.class_names[79] == "toothbrush"
    assert dm.eval_class_ids == list(range(40, 60))
    assert len(dm.train_class_ids) == 60


# ------------------------------------------------------------------------------------------ errors
def test_missing_root_and_bad_json(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="(?s)does not exist.*instances_"):
        dataset(tmp_path / "absent")
    broken = tmp_path / "broken"
    shutil.copytree(coco_root, broken, ignore=shutil.ignore_patterns("train2014", ".fss_cache"))
    with pytest.raises(DatasetLayoutError, match="train2014"):
        dataset(broken, "train")
    path = broken / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["categories"] = data["categories"][:10]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetLayoutError, match="80 COCO categories"):
        dataset(broken, mask_source="json")


def test_pfenet_protocol_drops_training_images_with_held_out_classes(tmp_path: Path) -> None:
    """``protocol: pfenet``: a training image showing a fold-0 class is left out (JSON and PNG alike);
    training episodes are crops of ``img_size``; evaluation is scored on the original label."""
    root = make_coco(tmp_path, size=(160, 200))
    sources = {}
    for source in ("json", "png"):
        train = dataset(root, "train", fold=0, mask_source=source, protocol="pfenet", img_size=64)
        sources[source] = train.items()
        assert train.usable_class_ids == [1, 5]
    # image k shows classes[k % 5] and classes[(k + 2) % 5]: only k % 5 == 1 (bicycle + bus) is clean
    kept = {int(stem[-4:]) % 5 for stem in sources["json"]}
    assert sources["json"] == sources["png"] and kept == {1}
    check_episode(
        dataset(root, "train", fold=0, protocol="pfenet", img_size=64).episode(0), shot=1, img_size=64
    )
    ep = dataset(root, fold=0, protocol="pfenet", img_size=64, use_original_imgsize=True).episode(0)
    assert ep["org_query_mask"].shape == (200, 200) and (ep["org_query_mask"][160:] == 255).all()
    assert (ep["query_mask"][48:] == 255).all()  # 160 x 200 -> 48 x 64 (floored to multiples of 8)


def test_png_value_255_is_background_as_in_hsnet_or_ignored_by_option(
    coco_root: Path, tmp_path: Path
) -> None:
    """HSNet's COCO loader has no ignore label: a PNG pixel valued 255 scores as background."""
    root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    ref = dataset(root, mask_source="png")
    stem = ref.class_items[0][0]
    png = root / "annotations" / "val2014" / f"{stem}.png"
    label = np.array(Image.open(png))
    label[:4] = 255
    Image.fromarray(label).save(png)
    by_default = dataset(root, mask_source="png").load_target(stem, 0, True)
    assert by_default[:4].max() == 0 and np.array_equal(by_default[4:], (label[4:] == 1).astype(np.uint8))
    ignored = dataset(root, mask_source="png", boundary="ignore").load_target(stem, 0, True)
    assert (ignored[:4] == 255).all() and np.array_equal(ignored[4:], by_default[4:])
