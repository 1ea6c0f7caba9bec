"""FS-CS metrics: the exact ratio (ER) and the (N+1)-class mIoU against hand counts, the iFSL
evaluator (a stored golden, and the evaluator itself when a clone is given) and DDP.

The golden numbers below were produced by running the public iFSL code's evaluator
(``fs-cs/common/evaluation.py`` of github.com/dahyun-kang/ifsl at d0b0c0d, ``AverageMeter`` with the
PASCAL-5i fold-0 classes, one episode per update as its test loop does) on the episodes of
:func:`random_fscs_episodes` below, outside this repository:
``PYTHONPATH=<this repo> python make_golden.py <clone>/fs-cs`` with a short script that feeds each
episode to ``update_seg`` / ``update_cls`` exactly as :func:`run_reference` does and prints the totals.
Set ``FSS_IFSL_REF`` to a clone of that repository to compare against the evaluator directly, on more
episodes.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fss.metrics import ExactRatio, FSCSIoU

FOLD0 = [0, 1, 2, 3, 4]  # PASCAL-5i fold 0, 0-based (the reference's 1..5)


def random_fscs_episodes(seed: int, way: int, count: int) -> list[dict[str, Any]]:
    """Seeded random FS-CS episodes (NumPy only, so the same on every platform).

    Each has an original size of 12-29 px per side, ``way`` distinct fold-0 classes (the first cycles
    through the fold so that every class occurs), a target with a random subset of the ways as
    rectangles (episode 0: none of them), a 255 ignore frame in every third episode, a prediction
    that copies the target with 20% of its pixels relabelled, and presence predictions that flip
    each true flag with probability 1/4.
    """
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(count):
        h, w = (int(v) for v in rng.integers(12, 30, size=2))
        others = [c for c in FOLD0 if c != FOLD0[i % 5]]
        classes = [FOLD0[i % 5], *(int(c) for c in rng.choice(others, way - 1, replace=False))]
        present = rng.random(way) < 0.6
        if i == 0:
            present[:] = False
        target = np.zeros((h, w), dtype=np.int64)
        for n in np.flatnonzero(present):
            y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
            y1, x1 = y0 + int(rng.integers(3, h - y0 + 1)), x0 + int(rng.integers(3, w - x0 + 1))
            target[y0:y1, x0:x1] = n + 1
        if i % 3 == 0:
            y0, x0 = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
            target[y0 : y0 + 6, x0] = 255
            target[y0, x0 : x0 + 6] = 255
        pred = np.where(target == 255, rng.integers(0, way + 1, size=(h, w)), target)
        flip = rng.random((h, w)) < 0.2
        pred[flip] = rng.integers(0, way + 1, size=int(flip.sum()))
        gt_cls = np.array([bool((target == n + 1).any()) for n in range(way)])
        pred_cls = gt_cls ^ (rng.random(way) < 0.25)
        episodes.append(
            {"pred": pred, "target": target, "classes": classes, "pred_cls": pred_cls, "gt_cls": gt_cls}
        )
    return episodes


def run_ours(episodes: list[dict[str, Any]], ignore_pixels: str) -> tuple[FSCSIoU, ExactRatio]:
    iou, er = FSCSIoU(num_classes=20, ignore_pixels=ignore_pixels), ExactRatio()
    for ep in episodes:
        iou.update(
            torch.from_numpy(ep["pred"])[None],
            torch.from_numpy(ep["target"])[None],
            torch.tensor([ep["classes"]]),
        )
        er.update(torch.from_numpy(ep["pred_cls"])[None], torch.from_numpy(ep["gt_cls"])[None])
    return iou, er


def run_reference(evaluation: Any, episodes: list[dict[str, Any]], way: int, ignore_pixels: str) -> Any:
    """Feed ``episodes`` to the iFSL ``AverageMeter`` as its PASCAL loader and test loop would.

    The loader gives ``query_mask`` with boundaries as 0 and ``query_ignore_idx`` = 1 on them: the
    meter's ``ignore_mask == 255`` test never fires (``ignore_pixels="background"``). With the 255-valued
    map that the test expects, it does ignore them (``"ignore"``).
    """
    dataset = SimpleNamespace(benchmark="pascal", class_ids=[c + 1 for c in FOLD0])
    meter = evaluation.AverageMeter(dataset, way)
    for ep in episodes:
        boundary = torch.from_numpy(ep["target"] == 255).float()
        batch = {
            "query_mask": torch.from_numpy(np.where(ep["target"] == 255, 0, ep["target"])).float()[None],
            "query_ignore_idx": (boundary if ignore_pixels == "background" else boundary * 255)[None],
            "support_classes": torch.tensor([[c + 1 for c in ep["classes"]]]),
        }
        meter.update_seg(torch.from_numpy(ep["pred"])[None], batch)
        meter.update_cls(torch.from_numpy(ep["pred_cls"]).float()[None], torch.from_numpy(ep["gt_cls"])[None])
    return meter


# -- hand-computed --------------------------------------------------------------------------------
def test_exact_ratio_counts_episodes_with_every_way_right() -> None:
    er = ExactRatio()
    er.update(
        torch.tensor([[1, 0], [1, 1], [0, 0]]), torch.tensor([[True, False], [True, False], [False, False]])
    )
    assert (er.correct.item(), er.total.item()) == (2, 3)
    assert er.compute().item() == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        er.update(torch.zeros(2, 2), torch.zeros(2, 3))


def test_iou_counts_per_way_class_and_background_by_hand() -> None:
    metric = FSCSIoU(num_classes=6)
    # 2 ways: classes 4 (label 1) and 1 (label 2); 255 counts as background by default
    pred = torch.tensor([[[1, 1, 0], [2, 0, 0]]])
    target = torch.tensor([[[1, 0, 0], [2, 2, 255]]])
    metric.update(pred, target, torch.tensor([[4, 1]]))
    # pixels 0..5: pred [1, 1, 0, 2, 0, 0], target [1, 0, 0, 2, 2, 0 (was 255)]
    # label 0: pred {2,4,5}, target {1,2,5} -> inter 2, union 4 (the background, index 0)
    # label 1 (class 4, index 5): pred {0,1}, target {0} -> inter 1, union 2
    # label 2 (class 1, index 2): pred {3}, target {3,4} -> inter 1, union 2
    assert metric.inter.tolist() == [2, 0, 1, 0, 0, 1, 0]
    assert metric.union.tolist() == [4, 0, 2, 0, 0, 2, 0]
    assert metric.seen.tolist() == [0, 1, 0, 0, 1, 0]
    assert metric.compute()["miou"].item() == pytest.approx(50.0)
    assert metric.background_iou().item() == pytest.approx(50.0)
    per_class = metric.per_class_iou()
    assert per_class[1].item() == pytest.approx(50.0) and torch.isnan(per_class[0])

    ignoring = FSCSIoU(num_classes=6, ignore_pixels="ignore")
    ignoring.update(pred, target, torch.tensor([[4, 1]]))
    assert ignoring.inter.tolist() == [1, 0, 1, 0, 0, 1, 0]  # pixel 5 left out everywhere
    assert ignoring.union.tolist() == [3, 0, 2, 0, 0, 2, 0]


def test_a_way_absent_from_query_and_prediction_scores_nothing() -> None:
    metric = FSCSIoU(num_classes=3)
    metric.update(
        torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[2]])
    )
    assert metric.union[3].item() == 0 and metric.seen[2].item() == 1
    assert metric.compute()["miou"].item() == 0.0  # IoU 0 / max(0, 1), as in the reference


def test_batched_updates_equal_single_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (6, 9, 11), generator=gen)
    target = torch.randint(0, 3, (6, 9, 11), generator=gen)
    target[:, 0] = 255
    classes = torch.stack([torch.randperm(7, generator=gen)[:2] for _ in range(6)])
    one, many = FSCSIoU(num_classes=7), FSCSIoU(num_classes=7)
    many.update(pred, target, classes)
    for i in range(6):
        one.update(pred[i : i + 1], target[i : i + 1], classes[i : i + 1])
    assert torch.equal(one.inter, many.inter) and torch.equal(one.union, many.union)
    assert torch.equal(one.seen, many.seen)


def test_bad_inputs_name_the_problem() -> None:
    metric = FSCSIoU(num_classes=5)
    with pytest.raises(ValueError, match="num_classes"):
        metric.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.tensor([[5]]))
    with pytest.raises(ValueError, match=r"0\.\.1"):
        metric.update(torch.full((1, 2, 2), 2), torch.zeros(1, 2, 2), torch.tensor([[0]]))
    with pytest.raises(ValueError, match=r"support_classes must be \[B=1, N\]"):
        metric.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="ignore_pixels"):
        FSCSIoU(num_classes=5, ignore_pixels="drop")  # type: ignore[arg-type]


# -- the iFSL evaluator ---------------------------------------------------------------------------
#: the reference evaluator's totals on random_fscs_episodes(seed=way, way, count=30): mIoU, ER and the
#: intersection / union of the background and classes 1..5 (1-based) per ignore_pixels mode
GOLDEN: dict[tuple[int, str], dict[str, Any]] = {
    (1, "background"): {
        "miou": 27.223221,
        "er": 66.666672,
        "inter": [11949, 49, 8, 140, 197, 200],
        "union": [13379, 337, 332, 459, 457, 439],
    },
    (1, "ignore"): {
        "miou": 28.027075,
        "er": 66.666672,
        "inter": [11898, 49, 8, 140, 197, 200],
        "union": [13269, 329, 321, 444, 445, 426],
    },
    (2, "background"): {
        "miou": 47.447514,
        "er": 46.666668,
        "inter": [9997, 667, 411, 213, 268, 367],
        "union": [11702, 1120, 852, 511, 711, 733],
    },
    (2, "ignore"): {
        "miou": 48.395847,
        "er": 46.666668,
        "inter": [9962, 667, 411, 213, 268, 367],
        "union": [11592, 1111, 837, 499, 689, 716],
    },
    (3, "background"): {
        "miou": 50.491272,
        "er": 36.666668,
        "inter": [8108, 406, 420, 608, 433, 334],
        "union": [9702, 864, 832, 1012, 806, 811],
    },
    (3, "ignore"): {
        "miou": 51.494862,
        "er": 36.666668,
        "inter": [8083, 406, 420, 608, 433, 334],
        "union": [9592, 841, 810, 1000, 794, 795],
    },
}


@pytest.mark.parametrize("way", [1, 2, 3])
@pytest.mark.parametrize("ignore_pixels", ["background", "ignore"])
def test_matches_the_stored_reference_evaluator_output(way: int, ignore_pixels: str) -> None:
    golden = GOLDEN[(way, ignore_pixels)]
    iou, er = run_ours(random_fscs_episodes(way, way, 30), ignore_pixels)
    assert iou.inter[:6].tolist() == golden["inter"]
    assert iou.union[:6].tolist() == golden["union"]
    assert iou.compute()["miou"].item() == pytest.approx(golden["miou"], abs=1e-4)
    assert er.compute().item() == pytest.approx(golden["er"], abs=1e-4)


def reference_evaluation() -> Any:
    """The iFSL ``fs-cs/common/evaluation.py`` module of the clone at ``$FSS_IFSL_REF`` (or skip)."""
    root = os.environ.get("FSS_IFSL_REF")
    if not root:
        pytest.skip(
            "set FSS_IFSL_REF to a clone of github.com/dahyun-kang/ifsl to compare with its evaluator"
        )
    path = Path(root) / "fs-cs" / "common" / "evaluation.py"
    if not path.is_file():
        pytest.skip(f"FSS_IFSL_REF={root} has no fs-cs/common/evaluation.py")
    spec = importlib.util.spec_from_file_location("ifsl_fscs_evaluation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("way", [1, 2, 4])
@pytest.mark.parametrize("ignore_pixels", ["background", "ignore"])
def test_matches_the_reference_evaluator(way: int, ignore_pixels: str) -> None:
    evaluation = reference_evaluation()
    episodes = random_fscs_episodes(100 + way, way, 200)
    meter = run_reference(evaluation, episodes, way, ignore_pixels)
    iou, er = run_ours(episodes, ignore_pixels)
    assert iou.inter[:6].tolist() == meter.total_area_inter[:6].long().tolist()
    assert iou.union[:6].tolist() == meter.total_area_union[:6].long().tolist()
    assert iou.compute()["miou"].item() == pytest.approx(meter.compute_iou().item(), abs=1e-4)
    assert er.compute().item() == pytest.approx(float(meter.compute_cls_er()), abs=1e-4)


# -- DDP ------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        iou, er = run_ours(random_fscs_episodes(7, 2, 21)[rank::world], "background")
        values = (iou.compute()["miou"].item(), er.compute().item(), iou.per_class_iou()[:5].tolist())
        out.put((rank, values))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not dist.is_available() or "fork" not in mp.get_all_start_methods(),
    reason="needs torch.distributed and fork",
)
def test_states_sync_across_processes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    out = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, out), nprocs=2, start_method="fork", join=True)
    results = dict(out.get() for _ in range(2))
    iou, er = run_ours(random_fscs_episodes(7, 2, 21), "background")
    single = (iou.compute()["miou"].item(), er.compute().item(), iou.per_class_iou()[:5].tolist())
    assert results[0] == results[1] == single
