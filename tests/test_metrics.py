"""FewShotIoU against hand-computed intersections and unions (HSNet evaluator protocol)."""

import math

import pytest
import torch

from fss.metrics import FewShotIoU, logged_values, spread, spread_line, summarize, t95


def _t(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def test_counts_with_ignore_pixels() -> None:
    metric = FewShotIoU(num_classes=4)
    pred = _t([[1, 1, 0], [0, 1, 1]]).unsqueeze(0)
    target = _t([[1, 0, 0], [255, 255, 1]]).unsqueeze(0)
    metric.update(pred, target, torch.tensor([2]))
    # the two 255 pixels (one predicted 0, one predicted 1) are dropped from both sides;
    # valid: pred [1,1,0,1] vs target [1,0,0,1]
    # fg: inter 2 (px 0, 5), union 3 (+ px 1); bg: inter 1 (px 2), union 2 (+ px 1)
    assert metric.inter[:, 2].tolist() == [1, 2]
    assert metric.union[:, 2].tolist() == [2, 3]
    assert metric.seen.tolist() == [0, 0, 1, 0]
    assert metric.inter.dtype == torch.long
    out = metric.compute()
    assert out["miou"].item() == pytest.approx(100 * 2 / 3)
    assert out["fbiou"].item() == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


def test_mean_over_seen_classes_and_fbiou_over_summed_counts() -> None:
    metric = FewShotIoU(num_classes=5)
    # class 0, two episodes in two batches: fg inter 1+2, union 2+2
    metric.update(_t([[1, 1], [0, 0]])[None], _t([[1, 0], [0, 0]])[None], torch.tensor([0]))
    metric.update(_t([[1, 1], [0, 0]])[None], _t([[1, 1], [0, 0]])[None], torch.tensor([0]))
    # class 3 is never predicted: fg inter 0, union 2 (its IoU is 0, it still counts)
    # class 1 has an empty union (no fg in target nor prediction): IoU 0 / max(0, 1) = 0
    pred = torch.stack([_t([[0, 0], [0, 0]]), _t([[0, 0], [0, 0]])])
    target = torch.stack([_t([[1, 1], [0, 0]]), _t([[0, 0], [0, 0]])])
    metric.update(pred, target, torch.tensor([3, 1]))

    assert metric.seen.tolist() == [2, 1, 0, 1, 0]
    assert metric.inter[1].tolist() == [3, 0, 0, 0, 0]
    assert metric.union[1].tolist() == [4, 0, 0, 2, 0]
    assert metric.inter[0].tolist() == [4, 4, 0, 2, 0]
    assert metric.union[0].tolist() == [5, 4, 0, 4, 0]

    out = metric.compute()
    # classes 2 and 4 are never seen and are left out of the mean
    assert out["miou"].item() == pytest.approx(100 * (3 / 4 + 0 + 0) / 3)
    fg = 3 / 6
    bg = (4 + 4 + 2) / (5 + 4 + 4)
    assert out["fbiou"].item() == pytest.approx(100 * (fg + bg) / 2)

    per_class = metric.per_class_iou()
    assert per_class.shape == (5,)
    assert per_class[0].item() == pytest.approx(75.0)
    assert per_class[1].item() == 0.0 and per_class[3].item() == 0.0
    assert math.isnan(per_class[2].item()) and math.isnan(per_class[4].item())


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_all_ignore_episode_and_reset() -> None:
    metric = FewShotIoU(num_classes=2)
    metric.update(torch.ones(1, 3, 3, dtype=torch.long), torch.full((1, 3, 3), 255), torch.tensor([1]))
    assert metric.union.sum().item() == 0 and metric.seen[1].item() == 1
    assert metric.compute()["miou"].item() == 0.0
    metric.reset()
    assert metric.seen.sum().item() == 0
    assert metric.compute()["miou"].item() == 0.0


def test_matches_histogram_formulation_on_random_episodes() -> None:
    """The reference counts with 2-bin histograms after setting pred to 255 where gt is 255."""
    gen = torch.Generator().manual_seed(0)
    num_classes, batches = 6, 5
    metric = FewShotIoU(num_classes=num_classes)
    inter = torch.zeros(2, num_classes, dtype=torch.float64)
    union = torch.zeros(2, num_classes, dtype=torch.float64)
    for _ in range(batches):
        pred = torch.randint(0, 2, (3, 7, 9), generator=gen)
        target = torch.randint(0, 2, (3, 7, 9), generator=gen)
        target[torch.rand(3, 7, 9, generator=gen) < 0.2] = 255
        class_id = torch.randint(0, 4, (3,), generator=gen)  # classes 4, 5 never occur
        metric.update(pred, target, class_id)
        for p, t, c in zip(pred.float(), target.float(), class_id):
            p = torch.where(t == 255, torch.full_like(p, 255), p)
            i = torch.histc(p[p == t], bins=2, min=0, max=1).double()
            u = torch.histc(p, bins=2, min=0, max=1).double() + torch.histc(t, bins=2, min=0, max=1) - i
            inter[:, c] += i
            union[:, c] += u
    seen = sorted(set(metric.seen.nonzero().flatten().tolist()))
    iou = inter / union.clamp(min=1)
    expected_miou = 100 * iou[1, seen].mean()
    expected_fbiou = 100 * (inter[:, seen].sum(1) / union[:, seen].sum(1)).mean()
    assert torch.equal(metric.inter.double(), inter) and torch.equal(metric.union.double(), union)
    out = metric.compute()
    assert out["miou"].item() == pytest.approx(expected_miou.item(), rel=1e-6)
    assert out["fbiou"].item() == pytest.approx(expected_fbiou.item(), rel=1e-6)


def test_exact_beyond_float32_range() -> None:
    metric = FewShotIoU(num_classes=1)
    # 2**24 + 1 foreground pixels per side: a float32 accumulator would round the odd count
    n = 2**12
    pred = torch.ones(1, n, n + 1, dtype=torch.uint8)
    pred[0, 0, 0] = 0
    target = torch.ones(1, n, n + 1, dtype=torch.uint8)
    metric.update(pred, target, torch.tensor([0]))
    metric.update(pred, target, torch.tensor([0]))
    assert metric.inter[1, 0].item() == 2 * (n * (n + 1) - 1)
    assert metric.union[1, 0].item() == 2 * n * (n + 1)


def test_bad_inputs_name_the_problem() -> None:
    metric = FewShotIoU(num_classes=3)
    with pytest.raises(ValueError, match="model.num_classes"):
        metric.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match="one shape"):
        metric.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), torch.tensor([0]))


def test_episode_sets_are_counted_apart_and_averaged() -> None:
    metric = FewShotIoU(num_classes=3, num_sets=2)
    one = _t([[1, 1], [0, 0]])[None]
    # set 0: class 1 predicted perfectly (IoU 1); set 1: class 1 half right (IoU 1/2)
    metric.update(one, _t([[1, 1], [0, 0]])[None], torch.tensor([1]), torch.tensor([0]))
    metric.update(one, _t([[1, 0], [0, 0]])[None], torch.tensor([1]), torch.tensor([1]))
    sets = metric.compute_sets()
    assert sets["miou"].tolist() == pytest.approx([100.0, 50.0])
    assert sets["fbiou"].tolist() == pytest.approx([100.0, 100 * (1 / 2 + 2 / 3) / 2])
    assert metric.compute()["miou"].item() == pytest.approx(75.0)
    assert metric.per_class_iou()[1].item() == pytest.approx(75.0)
    assert metric.per_class_iou_sets()[:, 1].tolist() == pytest.approx([100.0, 50.0])
    with pytest.raises(ValueError, match=r"episode_set \[2\] outside \[0, 2\)"):
        metric.update(one, one, torch.tensor([1]), torch.tensor([2]))


def test_spread_mean_std_and_student_t_interval_by_hand() -> None:
    s = spread([1.0, 2.0, 3.0])
    half = 4.303 / 3**0.5  # t(0.975, 2 dof) * std 1 / sqrt(3)
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert s["ci95_low"] == pytest.approx(2 - half) and s["ci95_high"] == pytest.approx(2 + half)
    assert t95(4) == 2.776 and t95(100) == 1.96
    single = spread([5.0])
    assert single["mean"] == 5.0 and math.isnan(single["std"]) and math.isnan(single["ci95_low"])


def test_summarize_names_classes_and_sets() -> None:
    metric = FewShotIoU(num_classes=3, num_sets=2)
    metric.update(
        _t([[1, 1], [0, 0]])[None], _t([[1, 1], [0, 0]])[None], torch.tensor([1]), torch.tensor([0])
    )
    metric.update(
        _t([[1, 1], [0, 0]])[None], _t([[1, 0], [0, 0]])[None], torch.tensor([1]), torch.tensor([1])
    )
    metric.update(
        _t([[0, 0], [0, 0]])[None], _t([[1, 0], [0, 0]])[None], torch.tensor([2]), torch.tensor([1])
    )
    summary = summarize(metric, ["seed0", "seed1"], ["a", "b", "c"])
    assert summary["per_class_iou"] == pytest.approx({"b": 75.0, "c": 0.0})  # "a" never seen
    assert summary["per_class_iou_per_set"] == {"b": [100.0, 50.0], "c": [None, 0.0]}
    assert summary["miou_per_set"] == pytest.approx([100.0, 25.0])
    assert summary["test_miou"] == pytest.approx(62.5) and summary["miou_spread"]["n"] == 2
    logged = logged_values(summary)
    assert logged["test/seed1/miou"] == pytest.approx(25.0) and logged["test/iou/b"] == pytest.approx(75.0)
    assert logged["test/miou_std"] == pytest.approx(summary["miou_spread"]["std"])
    assert "over 2 episode sets" in spread_line(summary) and "95% CI" in spread_line(summary)
    plain = summarize(FewShotIoU(num_classes=3))
    assert "episode_sets" not in plain and set(logged_values(plain)) == {"test/miou", "test/fbiou"}
