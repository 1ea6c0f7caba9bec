"""BAM's generalized few-shot (GFSS) merge and metrics (``fss.metrics.merge_gfss``, ``GFSSIoU``): values
computed by hand on tiny label maps, and parity with the reference's ``validate_GFSS``.

``tests/gfss_golden.json`` holds what BAM's ``test_GFSS.validate_GFSS`` (chunbolang/BAM at the mirrored
commit) returns on :func:`gfss_fixture`'s episodes, for both merge rules and two thresholds. It was run
outside the repository on the CPU: the reference's own ``test_GFSS.py`` imported with its unused
plotting imports stubbed, ``Tensor.cuda`` the identity, ``torch.histc`` fed floats and returning longs
(as CUDA's histc on the reference's long labels), ``args = Namespace(data_set="pascal",
batch_size_val=1, ignore_label=255, ori_resize=False, merge=..., merge_tau=...)``, a model returning
each episode's ``(final, final, base)`` logits and a loader of the 8 episodes (its hard-coded 1000
episodes are these 8, 125 times each: every count x 125, the same ratios). The reference reports
fractions; ours are percent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fss.metrics import GFSSIoU, gfss_logged_values, merge_gfss, summarize_gfss

GOLDEN = Path(__file__).with_name("gfss_golden.json")


def gfss_fixture(
    num_episodes: int = 8, base: int = 15, novel: int = 5, size: tuple[int, int] = (12, 10), grid: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """Episodes ``(final [1,2,g,g], base [1,1+C,g,g] logits, target [1,H,W], novel slot)``: the target is
    the final merge at tau 0.7 with 30% of the pixels relabelled at random and 10% ignored; episode 3
    has no novel pixel."""
    g = torch.Generator().manual_seed(0)
    episodes = []
    for e in range(num_episodes):
        final = 3 * torch.randn(1, 2, grid, grid, generator=g)
        base_logits = 3 * torch.randn(1, base + 1, grid, grid, generator=g)

        def up(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size, mode="bilinear", align_corners=True)

        target = up(base_logits).argmax(dim=1)
        target[up(final).softmax(dim=1)[:, 1] > 0.7] = base + 1
        noise = torch.rand(1, *size, generator=g)
        target[noise < 0.3] = torch.randint(0, base + 2, (1, *size), generator=g)[noise < 0.3]
        target[torch.rand(1, *size, generator=g) < 0.1] = 255
        if e == 3:
            target[target == base + 1] = 0
        episodes.append((final, base_logits, target, e % novel))
    return episodes


# -- the merge ---------------------------------------------------------------------------------------
def test_merge_rules_by_hand() -> None:
    # three pixels; base learner argmax 0, 1, 2 (C = 2); few-shot foreground prob 0.95, 0.95, 0.05
    base = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5]]).T.reshape(1, 3, 1, 3)
    final = torch.stack([torch.zeros(3), torch.tensor([3.0, 3.0, -3.0])]).reshape(1, 2, 1, 3)
    assert merge_gfss(final, base, "final", 0.9).tolist() == [[[3, 3, 2]]]  # novel wins everywhere
    assert merge_gfss(final, base, "base", 0.9).tolist() == [[[3, 1, 2]]]  # only on base background
    assert merge_gfss(final, base, "final", 0.96).tolist() == [[[0, 1, 2]]]  # sigmoid(3) = 0.9526
    with pytest.raises(ValueError, match="'final' or 'base'"):
        merge_gfss(final, base, "mean", 0.9)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"base_logits must be \[B, 1 \+ C, H, W\]"):
        merge_gfss(final, base[..., :2], "final", 0.9)


# -- the metric by hand ------------------------------------------------------------------------------
def hand_metric(**kwargs) -> GFSSIoU:
    """Base classes 5 and 7 (labels 1, 2), novel classes 0 and 1 (label 3), two episodes."""
    metric = GFSSIoU(base_class_ids=[5, 7], novel_class_ids=[0, 1], **kwargs)
    target = torch.tensor([[[0, 1, 2], [3, 3, 255]], [[0, 0, 3], [2, 2, 0]]])
    pred = torch.tensor([[[0, 1, 1], [3, 0, 2]], [[0, 3, 3], [2, 1, 0]]])
    metric.update(pred, target, torch.tensor([0, 1]))
    return metric


def test_metric_values_by_hand() -> None:
    # episode 1 (novel 0): bg I1 U2, label1 I1 U2, label2 I0 U1 (its pred pixel is ignored), novel I1 U2
    # episode 2 (novel 1): bg I2 U3, label1 I0 U1, label2 I1 U2, novel I1 U2
    # totals: bg 3/5, class 5: 1/3, class 7: 1/3, novel 0: 1/2, novel 1: 1/2; pooled fg 4/10
    metric = hand_metric()
    assert metric.inter.tolist() == [[3, 1, 1, 1, 1]] and metric.union.tolist() == [[5, 3, 3, 2, 2]]
    values = {k: float(v) for k, v in metric.compute().items()}
    expected = {"miou_b": 100 / 3, "miou_n": 50.0, "miou_t": 100 * 5 / 12, "piou": 40.0, "fbiou": 50.0}
    assert values == pytest.approx(expected, rel=1e-6)
    summary = summarize_gfss(metric, class_names=[f"c{i}" for i in range(8)])
    assert summary["per_class_iou"] == pytest.approx({"c5": 100 / 3, "c7": 100 / 3, "c0": 50.0, "c1": 50.0})
    assert summary["novel_classes"] == ["c0", "c1"]
    assert gfss_logged_values(summary)["test/gfss/miou_t"] == pytest.approx(100 * 5 / 12)


def test_a_class_never_seen_counts_as_zero_as_in_the_reference() -> None:
    metric = GFSSIoU(base_class_ids=[5, 7], novel_class_ids=[0, 1, 2])
    metric.update(torch.tensor([[[0, 3]]]), torch.tensor([[[0, 3]]]), torch.tensor([2]))
    values = metric.compute()
    assert float(values["miou_n"]) == pytest.approx(100 / 3)  # novel 2 perfect, 0 and 1 never seen
    assert float(values["miou_b"]) == 0.0 and float(values["fbiou"]) == pytest.approx(100.0)


def test_states_summed_over_processes_equal_one_process() -> None:
    """DDP sums the int64 states: two halves merged = the whole (torchmetrics' merge_state sums them too)."""
    whole = hand_metric()
    first, second = (GFSSIoU(base_class_ids=[5, 7], novel_class_ids=[0, 1]) for _ in range(2))
    target = torch.tensor([[[0, 1, 2], [3, 3, 255]], [[0, 0, 3], [2, 2, 0]]])
    pred = torch.tensor([[[0, 1, 1], [3, 0, 2]], [[0, 3, 3], [2, 1, 0]]])
    first.update(pred[:1], target[:1], torch.tensor([0]))
    second.update(pred[1:], target[1:], torch.tensor([1]))
    first.merge_state(second)
    assert torch.equal(first.inter, whole.inter) and torch.equal(first.union, whole.union)


def test_episode_sets_are_kept_apart() -> None:
    metric = GFSSIoU(base_class_ids=[5, 7], novel_class_ids=[0, 1], num_sets=2)
    target = torch.tensor([[[0, 1, 2], [3, 3, 255]], [[0, 0, 3], [2, 2, 0]]])
    pred = torch.tensor([[[0, 1, 1], [3, 0, 2]], [[0, 3, 3], [2, 1, 0]]])
    metric.update(pred, target, torch.tensor([0, 1]), torch.tensor([1, 1]))
    sets = metric.compute_sets()
    assert sets["miou_t"].tolist() == pytest.approx([0.0, 100 * 5 / 12])
    summary = summarize_gfss(metric, ["seed0", "seed1"])
    assert summary["miou_t"] == pytest.approx(100 * 5 / 24) and summary["miou_t_best"] == pytest.approx(
        100 * 5 / 12
    )


def test_bad_input_is_named() -> None:
    metric = GFSSIoU(base_class_ids=[5, 7], novel_class_ids=[0, 1])
    with pytest.raises(ValueError, match="not novel classes"):
        metric.update(
            torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([5])
        )
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3"):
        metric.update(torch.full((1, 2, 2), 4), torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match="overlap"):
        GFSSIoU(base_class_ids=[0, 7], novel_class_ids=[0, 1])


# -- parity with BAM's validate_GFSS -------------------------------------------------------------------
@pytest.mark.parametrize("merge", ["final", "base"])
@pytest.mark.parametrize("tau", [0.5, 0.9])
def test_matches_the_reference_validate_gfss(merge: str, tau: float) -> None:
    golden = json.loads(GOLDEN.read_text())[f"{merge}_{tau}"]
    metric = GFSSIoU(base_class_ids=list(range(5, 20)), novel_class_ids=list(range(5)))
    for final, base, target, slot in gfss_fixture():
        size = tuple(target.shape[-2:])
        final, base = (F.interpolate(x, size, mode="bilinear", align_corners=True) for x in (final, base))
        metric.update(merge_gfss(final, base, merge, tau), target, torch.tensor([slot]))  # type: ignore[arg-type]
    values = {k: float(v) / 100 for k, v in metric.compute().items()}
    assert values == pytest.approx(golden, rel=1e-6, abs=1e-9)
