"""The references' exact test episodes (``data.episode_order``), pinned on a small fixture.

How the expected lists were produced (once, 2026-12-03): :func:`build_fixture` below wrote this
fixture into a folder laid out as the references expect (``VOC2012/``, ``COCO2014/``, ``FSS-1000/``)
and its lists into the ``data/splits/{pascal,coco,fss}`` folders of local copies of the public code
(juhongm999/hsnet and dahyun-kang/ifsl ``fs-s``, outside this repository). Then their own loaders ran
as their test scripts run them: HSNet: ``utils.fix_randseed(0)``, ``FSSDataset.initialize(img_size=400,
...)``, ``FSSDataset.build_dataloader(bench, 1, 0, fold, 'test', shot)`` and the batches in
order; ASNet: ``FSSDatasetModule(args).test_dataloader().dataset[i]`` for i = 0, 1, ... The query
name, support names and class id of the first episodes are stored below, with names shortened to
the fixture's image number (PASCAL ``2007_00<k>``, COCO ``COCO_val2014_<500 + k>``, FSS-1000
``<class>/<k>``). VAT's ``test.py`` gave the same sequences as HSNet's.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fss.data.coco import COCO20iDataset, coco_fold_class_ids, png_pixel_index
from fss.data.common import validation_items
from fss.data.fss1000 import FSS1000Dataset
from fss.data.pascal import Pascal5iDataset
from fss.data.protocols import EPISODE_ORDERS, legacy_pick, reference_sequence
from tests.data.fixtures import (
    FSS1000_NAMES,
    make_coco,
    make_fss1000,
    make_pascal,
    pascal_image_classes,
    write_fss1000_lists,
)

#: the classes of the COCO fixture: COCO-20i fold 0 (the reference draws among all 20) and one more
COCO_CLASSES = (*coco_fold_class_ids(0), 1)


def build_fixture(root: Path) -> dict[str, Path]:
    """PASCAL (40 val, 20 training images), COCO (44 val images, 21 classes) and FSS-1000 (6 classes of 10 images)
    in HSNet's layout under ``root``, with the lists the references read; returns the paths."""
    make_pascal(root, n_train=20, n_val=40)
    pascal_splits = root / "splits" / "pascal"
    for sub, year, n in (("val", 2007, 40), ("trn", 2008, 20)):
        (pascal_splits / sub).mkdir(parents=True)
        for fold in range(4):
            lines = [
                f"{year}_00{k:04d}__{c + 1:02d}"
                for k in range(n)
                for c in sorted(pascal_image_classes(k))
                if c // 5 == fold
            ]
            (pascal_splits / sub / f"fold{fold}.txt").write_text("".join(f"{line}\n" for line in lines))
    coco = make_coco(root / "COCO2014", classes=COCO_CLASSES, n_train=4, n_val=44)
    coco_splits = root / "splits" / "coco"
    for sub, images in (("val", "val2014"), ("trn", "train2014")):
        (coco_splits / sub).mkdir(parents=True)
        for fold in range(4):
            index = png_pixel_index(coco, images)
            lists = {
                c: [f"{images}/{stem}.jpg" for stem in sorted(index) if c + 1 in index[stem]]
                for c in range(80)
            }
            with open(coco_splits / sub / f"fold{fold}.pkl", "wb") as f:
                pickle.dump(lists, f)
    make_fss1000(root / "FSS-1000", n_classes=6, n_images=10)
    names = list(FSS1000_NAMES[:6])
    fss_splits = write_fss1000_lists(root / "splits" / "fss", names[:2], names[2:4], names[4:])
    return {"pascal_splits": pascal_splits, "coco_splits": coco_splits, "fss_splits": fss_splits}


#: (order, bench, shot) -> the reference's first episodes: (query, supports, class id); FSS-1000
#: entries are (query, supports), its class ids being HSNet's 760 + k (fss numbers classes densely)
EXPECTED: dict[tuple[str, str, int], list] = {
    ("hsnet", "pascal", 1): [
        (0, [20], 0), (1, [31], 1), (2, [12], 2), (3, [13], 3), (4, [14], 4), (10, [0], 0), (11, [21], 1),
        (12, [22], 2), (13, [3], 3), (14, [24], 4), (20, [0], 0), (21, [1], 1), (22, [32], 2), (23, [33], 3),
        (24, [4], 4), (30, [10], 0), (31, [11], 1), (32, [22], 2), (33, [23], 3), (34, [24], 4), (0, [30], 0),
        (1, [11], 1), (2, [12], 2), (3, [23], 3),
    ],
    ("hsnet", "pascal", 5): [
        (0, [20, 30, 10, 10, 10], 0), (1, [21, 21, 11, 21, 31], 1), (2, [22, 32, 12, 12, 22], 2),
        (3, [23, 23, 33, 13, 13], 3), (4, [24, 34, 14, 24, 14], 4), (10, [30, 30, 0, 20, 0], 0),
        (11, [21, 21, 31, 21, 1], 1), (12, [2, 2, 2, 22, 2], 2),
    ],
    ("asnet", "pascal", 1): [
        (0, [20], 0), (1, [31], 1), (2, [22], 2), (3, [33], 3), (4, [24], 4), (10, [0], 0), (11, [1], 1),
        (12, [22], 2), (13, [23], 3), (14, [34], 4), (20, [30], 0), (21, [31], 1),
    ],
    ("asnet", "pascal", 5): [
        (0, [20, 30, 10, 10, 10], 0), (1, [31, 31, 21, 31, 31], 1), (2, [22, 32, 12, 22, 12], 2),
        (3, [33, 13, 33, 23, 33], 3),
    ],
    ("hsnet", "coco", 1): [
        (18, [16], 72), (23, [25], 16), (17, [19], 76), (28, [5], 28), (4, [6], 24), (27, [6], 24),
        (43, [41], 4), (42, [21], 8), (18, [16], 72), (16, [39], 72), (13, [36], 60), (7, [28], 36),
        (6, [27], 32), (26, [24], 20), (34, [13], 60), (15, [38], 68), (36, [15], 68), (0, [21], 0),
        (31, [12], 48), (3, [24], 20), (36, [15], 68), (43, [1], 4), (8, [29], 32), (25, [4], 16),
    ],
    ("hsnet", "coco", 5): [
        (18, [16, 37, 37, 16, 37], 72), (36, [15, 34, 13, 13, 13], 60), (1, [43, 22, 41, 41, 41], 4),
        (36, [15, 38, 15, 38, 17], 68), (43, [41, 1, 1, 20, 22], 4), (13, [15, 34, 15, 15, 34], 60),
        (42, [0, 21, 40, 40, 21], 0), (27, [4, 6, 4, 4, 4], 24),
    ],
    ("asnet", "coco", 1): [
        (18, [16], 72), (3, [24], 12), (33, [12], 48), (14, [35], 56), (40, [17], 76), (42, [0], 8),
        (15, [38], 68), (22, [43], 4), (7, [28], 28), (22, [43], 12), (7, [28], 28), (1, [24], 12),
    ],
    ("hsnet", "fss", 1): [
        ("eagle/1", ["eagle/3"]), ("eagle/10", ["eagle/4"]), ("eagle/2", ["eagle/3"]), ("eagle/3", ["eagle/7"]),
        ("eagle/4", ["eagle/6"]), ("eagle/5", ["eagle/2"]), ("eagle/6", ["eagle/4"]), ("eagle/7", ["eagle/1"]),
        ("eagle/8", ["eagle/2"]), ("eagle/9", ["eagle/10"]), ("fork/1", ["fork/5"]), ("fork/10", ["fork/5"]),
        ("fork/2", ["fork/6"]), ("fork/3", ["fork/1"]), ("fork/4", ["fork/8"]), ("fork/5", ["fork/2"]),
        ("fork/6", ["fork/5"]), ("fork/7", ["fork/5"]), ("fork/8", ["fork/10"]), ("fork/9", ["fork/3"]),
    ],
    ("hsnet", "fss", 5): [
        ("eagle/1", ["eagle/3", "eagle/4", "eagle/3", "eagle/7", "eagle/6"]),
        ("eagle/10", ["eagle/2", "eagle/4", "eagle/1", "eagle/8", "eagle/2"]),
        ("eagle/2", ["eagle/10", "eagle/5", "eagle/5", "eagle/6", "eagle/1"]),
        ("eagle/3", ["eagle/8", "eagle/2", "eagle/5", "eagle/5", "eagle/10"]),
        ("eagle/4", ["eagle/3", "eagle/3", "eagle/3", "eagle/10", "eagle/6"]),
        ("eagle/5", ["eagle/2", "eagle/8", "eagle/1", "eagle/7", "eagle/7"]),
    ],
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _quiet_fss_logs() -> Iterator[None]:
    """The fixture's datasets announce generated lists and skipped classes: quiet here, restored after
    (a level left at ERROR hid the warnings other modules' tests look for)."""
    logger = logging.getLogger("fss")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("protocols")
    return root, build_fixture(root)


def build(fixture: tuple[Path, dict[str, Path]], bench: str, split: str = "test", **kwargs):
    root, paths = fixture
    if bench == "pascal":
        return Pascal5iDataset(root, split, split_dir=paths["pascal_splits"], img_size=32, **kwargs)
    if bench == "coco":
        return COCO20iDataset(root / "COCO2014", split, split_dir=paths["coco_splits"], img_size=32, **kwargs)
    return FSS1000Dataset(root / "FSS-1000", split, split_dir=paths["fss_splits"], img_size=32, **kwargs)


def short_name(bench: str, name: str) -> int | str:
    """The fixture's image number (PASCAL ``2007_00<k>``, COCO ``..._<500 + k>``) or FSS ``class/k``."""
    if bench == "pascal":
        return int(name.split("_00")[1])
    if bench == "coco":
        return int(name.rsplit("_", 1)[1]) - 500
    return name


@pytest.mark.parametrize(("order", "bench", "shot"), list(EXPECTED))
def test_episode_order_reproduces_the_reference_test_sequence(fixture, order, bench, shot) -> None:
    dataset = build(fixture, bench, shot=shot, episode_order=order)
    got = []
    for i in range(len(EXPECTED[order, bench, shot])):
        query, supports, class_id = dataset.episode_identity(i)
        row = (short_name(bench, query), [short_name(bench, s) for s in supports])
        got.append(row if bench == "fss" else (*row, class_id))
    assert got == [tuple(row) for row in EXPECTED[order, bench, shot]]
    if bench == "fss":  # the class is the query's folder
        assert all(
            dataset.class_names[dataset.episode_identity(i)[2]] == q.split("/")[0]
            for i, (q, _) in enumerate(got)
        )


def test_fss_own_order_draws_other_supports_and_distinct_5_shot_supports(fixture) -> None:
    """Without episode_order the episodes are fss's: the same queries for PASCAL, other supports."""
    reference = build(fixture, "pascal", episode_order="hsnet")
    own = build(fixture, "pascal")
    ids = [(own.episode_identity(i), reference.episode_identity(i)) for i in range(20)]
    assert all(a[0] == b[0] for a, b in ids)  # the query rule is the reference's
    assert sum(a[1] != b[1] for a, b in ids) >= 5  # supports differ
    five = build(fixture, "coco", shot=3)
    assert all(len(set(five.episode_identity(i)[1])) == 3 for i in range(50))


def test_the_sequence_is_computed_once_and_shared_by_workers_and_processes(fixture) -> None:
    from fss.data.sampling import EpisodeSampler

    dataset = build(fixture, "coco", num_episodes=30, episode_order="hsnet")
    sequence = dataset.sequence
    assert sequence is not None and len(sequence) == 30 and dataset.sequence is sequence
    expected = [dataset.episode_identity(i) for i in range(30)]
    # two processes: each takes its share of the indices; together they see every episode once, as is
    seen = {}
    for rank in range(2):
        for key in EpisodeSampler(30, rank=rank, world_size=2):
            seen[key] = dataset[key]
    assert [
        (e["query_name"], e["support_names"], int(e["class_id"])) for _, e in sorted(seen.items())
    ] == expected
    # workers receive a pickled copy: the copy holds the same identities
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.sequence == sequence


def test_a_datamodule_precomputes_the_sequence_for_val_and_test_only(fixture) -> None:
    from fss.data.pascal import PascalDataModule

    root, paths = fixture
    dm = PascalDataModule(
        root=str(root), split_dir=str(paths["pascal_splits"]), img_size=32, episode_order="hsnet"
    )
    dm.setup("fit")
    assert dm.datasets["val"]._sequence is not None  # built with the dataset
    assert dm.datasets["train"].sequence is None  # training episodes always follow fss
    dm.setup("test")
    val, test = dm.datasets["val"], dm.datasets["test"]
    # as in the references, validation repeats the test sequence (same split, same seed)
    assert [val.episode_identity(i) for i in range(10)] == [test.episode_identity(i) for i in range(10)]


def test_reference_orders_need_two_images_per_class_not_shot_plus_one() -> None:
    """The references draw supports with replacement: a class of 2 images serves any shot."""
    pool = {0: ["a", "b"], 1: ["c", "d", "e"]}
    queries = [("a", 0), ("c", 1), ("b", 0)]
    sequence = reference_sequence("hsnet", 0, 3, 5, lambda rs, i: queries[i], lambda c: pool[c])
    assert [s.supports for s in sequence][0] == ("b",) * 5 and sequence[2].supports == ("a",) * 5
    assert all(s.query not in s.supports for s in sequence)
    with pytest.raises(ValueError, match="no support image other than the query"):
        reference_sequence("hsnet", 0, 1, 1, lambda rs, i: ("a", 0), lambda c: ["a"])
    with pytest.raises(ValueError, match="'hsnet' or 'asnet'"):
        reference_sequence("fss", 0, 1, 1, lambda rs, i: ("a", 0), lambda c: ["a", "b"])


def test_hsnet_episodes_depend_on_all_earlier_draws_asnet_ones_only_on_their_index() -> None:
    pool = {0: list(range(50))}
    hsnet = reference_sequence("hsnet", 0, 20, 1, lambda rs, i: (i, 0), lambda c: pool[c])
    asnet = reference_sequence("asnet", 0, 20, 1, lambda rs, i: (i, 0), lambda c: pool[c])
    # asnet episode i is np.random.seed(i) then one draw (the query i is never redrawn here: 50 > 20)
    for i, identity in enumerate(asnet):
        first = legacy_pick(np.random.RandomState(i), 50)
        assert identity.supports[0] == (first if first != i else identity.supports[0])
    # hsnet: one stream; a different seed changes the whole sequence
    other = reference_sequence("hsnet", 1, 20, 1, lambda rs, i: (i, 0), lambda c: pool[c])
    assert [s.supports for s in hsnet] != [s.supports for s in other]
    assert "fss" in EPISODE_ORDERS and "hsnet" in EPISODE_ORDERS and "asnet" in EPISODE_ORDERS


def test_training_episodes_ignore_the_episode_order(fixture) -> None:
    a = build(fixture, "pascal", split="train", num_episodes=8)
    b = build(fixture, "pascal", split="train", num_episodes=8, episode_order="hsnet")
    assert [a.episode_identity(i) for i in range(8)] == [b.episode_identity(i) for i in range(8)]


# ------------------------------------------------------------------------------ val_fraction
def test_validation_items_are_stratified_disjoint_and_fixed() -> None:
    # class 0: 4 images, class 1: 10 images, 2 of them shared with class 0
    class_items = {0: ["a", "b", "c", "d"], 1: ["c", "d", *"efghijkl"]}
    chosen = validation_items(class_items, 0.5)
    assert chosen == validation_items(class_items, 0.5)  # deterministic
    assert sum(i in chosen for i in class_items[0]) == 2  # the rarest class gets exactly half
    assert sum(i in chosen for i in class_items[1]) == 5  # counting what class 0 already placed
    assert chosen <= {*class_items[0], *class_items[1]}


@pytest.mark.parametrize("bench", ["pascal", "coco"])
def test_val_fraction_keeps_validation_away_from_test_images(fixture, bench) -> None:
    val = build(fixture, bench, split="val", val_fraction=0.5, num_episodes=60)
    test = build(fixture, bench, split="test", val_fraction=0.5, num_episodes=60)
    full = build(fixture, bench, split="test", num_episodes=60)
    val_images, test_images = set(val.items()), set(test.items())
    assert val_images and test_images and not val_images & test_images
    assert val_images | test_images == set(full.items())
    for i in range(60):  # no episode crosses over: queries and supports stay in their part
        query, supports, _ = val.identity(val.rng(i), i)
        assert {query, *supports} <= val_images
        query, supports, _ = test.identity(test.rng(i), i)
        assert {query, *supports} <= test_images


def test_val_fraction_does_nothing_where_val_has_its_own_classes(fixture) -> None:
    with_fraction = build(fixture, "fss", split="val", val_fraction=0.5)
    without = build(fixture, "fss", split="val")
    assert with_fraction.items() == without.items()


def test_bad_options_name_the_option(fixture) -> None:
    with pytest.raises(ValueError, match="episode_order must be 'fss', 'hsnet'"):
        build(fixture, "pascal", episode_order="reference")
    with pytest.raises(ValueError, match=r"val_fraction must be null .* \(0, 1\)"):
        build(fixture, "pascal", val_fraction=1.0)
    with pytest.raises(ValueError, match="boundary must be 'reference', 'ignore' or 'background'"):
        build(fixture, "pascal", boundary="void")


def test_the_file_options_are_typed_and_documented_in_every_file_module() -> None:
    from jsonargparse import ArgumentParser

    from fss.data import COCO20iDataModule, FSS1000DataModule, PascalDataModule

    for cls in (PascalDataModule, COCO20iDataModule, FSS1000DataModule):
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")
        actions = {action.dest: action for action in parser._actions}
        for name in ("resize", "episode_order", "boundary", "val_fraction", "test_seeds"):
            assert actions[f"data.{name}"].help, (cls.__name__, name)
        defaults = parser.get_defaults().data
        assert (defaults.resize, defaults.episode_order, defaults.boundary) == ("pil", "fss", "reference")
        with pytest.raises(Exception, match="hsnet2"):
            parser.parse_args(["--data.root", "x", "--data.episode_order", "hsnet2"])
