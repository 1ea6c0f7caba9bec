"""The few-shot segmentation metrics of the HSNet protocol: per-class foreground IoU (mIoU) and FB-IoU.

Over all episodes of an evaluation, the intersection and union of the foreground and of the
background are summed *per class* (the episode's ``class_id``). Then

* IoU_c = fg_inter_c / max(fg_union_c, 1) for each class c, and mIoU = 100 x mean_c IoU_c over
  the classes seen at least once;
* FB-IoU = 100 x mean over {background, foreground} of (sum_c inter) / (sum_c union).

Pixels whose target is 255 (ignore) count in neither the prediction nor the target, as in the
reference evaluator. See ``docs/metrics.md``.

Several independent episode sets (``data.test_seeds``) are accumulated side by side, each with its
own counts; :func:`spread` gives their mean, standard deviation and 95% confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

IGNORE_INDEX = 255

#: two-sided 95% quantiles of Student's t distribution, by degrees of freedom (1..30)
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (1.96 beyond 30: the normal's)."""
    if dof < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {dof}")
    return _T95[dof - 1] if dof <= len(_T95) else 1.96


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and 95% confidence interval of the mean of ``values``.

    The interval is ``mean +- t95(n - 1) * std / sqrt(n)`` (Student's t: the values are n
    independent episode sets); with one value the std and the interval are NaN.

    Returns:
        ``{"mean", "std", "ci95_low", "ci95_high", "n"}``.
    """
    n = len(values)
    if n == 0:
        raise ValueError("spread needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan, "n": 1}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t95(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}


class FewShotIoU(Metric):
    """Accumulates per-class foreground/background intersection and union over episodes.

    Args:
        num_classes: size of the global class index space (``class_id`` must be below it);
            the state is a few int64 tensors of this width, so a generous value is cheap.
        ignore_index: target value excluded from both prediction and target.
        num_sets: independent episode sets accumulated side by side (``update``'s ``episode_set``);
            :meth:`compute` averages their mIoU and FB-IoU, :meth:`compute_sets` gives each.

    States (int64, summed across processes; set ``s`` holds columns ``s * num_classes ..``):
        inter: [2, num_sets * num_classes] intersection per (background, foreground) and class.
        union: [2, num_sets * num_classes] union per (background, foreground) and class.
        seen:  [num_sets * num_classes] number of episodes per class.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    inter: Tensor
    union: Tensor
    seen: Tensor

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, num_sets: int = 1, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if num_sets < 1:
            raise ValueError(f"num_sets must be positive, got {num_sets}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.num_sets = num_sets
        width = num_sets * num_classes
        # int64: float32 counts stop being exact above 2**24 pixels (a few hundred COCO episodes)
        self.add_state("inter", torch.zeros(2, width, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(2, width, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("seen", torch.zeros(width, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, pred: Tensor, target: Tensor, class_id: Tensor, episode_set: Tensor | None = None
    ) -> None:
        """Add a batch of episodes.

        Args:
            pred: [B, H, W] integer prediction in {0, 1}.
            target: [B, H, W] integer target in {0, 1, ignore_index}.
            class_id: [B] global class index of each episode.
            episode_set: [B] which episode set each episode belongs to (``None``: set 0).
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape")
        class_id = class_id.reshape(-1).long()
        if class_id.numel() != pred.shape[0]:
            raise ValueError(f"class_id has {class_id.numel()} entries for a batch of {pred.shape[0]}")
        if class_id.numel() and (int(class_id.min()) < 0 or int(class_id.max()) >= self.num_classes):
            raise ValueError(
                f"class_id {class_id.tolist()} outside [0, {self.num_classes}): raise num_classes "
                "(option model.num_classes, linked from the data module's num_classes)"
            )
        if episode_set is not None:
            episode_set = episode_set.reshape(-1).long().to(class_id.device)
            if episode_set.numel() != class_id.numel():
                raise ValueError(
                    f"episode_set has {episode_set.numel()} entries for {class_id.numel()} episodes"
                )
            if int(episode_set.min()) < 0 or int(episode_set.max()) >= self.num_sets:
                raise ValueError(f"episode_set {episode_set.tolist()} outside [0, {self.num_sets})")
            class_id = class_id + episode_set * self.num_classes
        pred = pred.reshape(pred.shape[0], -1)
        target = target.reshape(target.shape[0], -1)
        valid = target != self.ignore_index
        inter, union = [], []
        for cls in (0, 1):  # background, foreground
            p = (pred == cls) & valid
            t = target == cls
            inter.append((p & t).sum(dim=1))
            union.append((p | t).sum(dim=1))
        self.inter.index_add_(1, class_id, torch.stack(inter))
        self.union.index_add_(1, class_id, torch.stack(union))
        self.seen.index_add_(0, class_id, torch.ones_like(class_id))

    def _per_set(self, state: Tensor) -> Tensor:
        """A state [..., num_sets * num_classes] as [..., num_sets, num_classes]."""
        return state.reshape(*state.shape[:-1], self.num_sets, self.num_classes)

    def _class_iou(self) -> Tensor:
        """[2, num_sets, num_classes] IoU (float64, 0..1) per (background, foreground), set and class."""
        return self._per_set(self.inter).double() / self._per_set(self.union).clamp(min=1).double()

    def _values(self) -> tuple[Tensor, Tensor]:
        """mIoU and FB-IoU of every set, float64 [num_sets] in percent (0 for a set never updated)."""
        seen = self._per_set(self.seen) > 0  # [S, C]
        fg_iou = self._class_iou()[1]  # [S, C]
        miou = (fg_iou * seen).sum(dim=1) / seen.sum(dim=1).clamp(min=1)
        # classes never seen have zero counts, so summing over all classes sums over the seen ones
        inter = self._per_set(self.inter).sum(dim=2).double()  # [2, S]
        union = self._per_set(self.union).sum(dim=2).clamp(min=1).double()
        fbiou = (inter / union).mean(dim=0)
        return 100 * miou, 100 * fbiou * seen.any(dim=1)

    def compute(self) -> dict[str, Tensor]:
        """``{"miou": ..., "fbiou": ...}`` as float32 scalars in percent (0 before any update).

        With several episode sets: the mean over the sets of each set's value.
        """
        miou, fbiou = self._values()
        return {"miou": miou.mean().float(), "fbiou": fbiou.mean().float()}

    def compute_sets(self) -> dict[str, Tensor]:
        """``{"miou": [num_sets], "fbiou": [num_sets]}``: each episode set's values (float64, percent).

        Synchronised across processes like :meth:`compute` (a collective under DDP).
        """
        with self.sync_context():
            miou, fbiou = self._values()
        return {"miou": miou, "fbiou": fbiou}

    def per_class_iou_sets(self) -> Tensor:
        """Foreground IoU per set and class [num_sets, num_classes] in percent, NaN where never seen.

        Synchronised across processes like :meth:`compute`.
        """
        with self.sync_context():
            iou = 100 * self._class_iou()[1]
            iou[self._per_set(self.seen) == 0] = float("nan")
        return iou

    def per_class_iou(self) -> Tensor:
        """Foreground IoU per class [num_classes] in percent (mean over the sets that saw the class),
        NaN for classes never seen. Synchronised across processes like :meth:`compute`."""
        return self.per_class_iou_sets().nanmean(dim=0).float()


def summarize(
    metric: FewShotIoU, set_labels: Sequence[str] | None = None, class_names: Sequence[str] = ()
) -> dict:
    """Everything an evaluation reports, as plain numbers (a collective under DDP: call on every rank).

    Args:
        metric: the accumulated metric.
        set_labels: a name per episode set (``seed0``, ...) when the metric holds several.
        class_names: ``class_names[class_id]`` (ids without a name are written as numbers).

    Returns:
        ``{"test_miou", "test_fbiou", "per_class_iou": {class: IoU}}`` (mean over the sets, percent),
        and with ``set_labels``: ``"episode_sets"`` (the labels), ``"miou_per_set"``,
        ``"fbiou_per_set"``, ``"miou_spread"`` and ``"fbiou_spread"`` (:func:`spread` of the per-set
        values) and ``"per_class_iou_per_set"`` (``{class: [IoU per set]}``, None where unseen).
    """
    sets = {k: v.tolist() for k, v in metric.compute_sets().items()}
    per_set_class = metric.per_class_iou_sets()  # [S, C]
    mean_class = per_set_class.nanmean(dim=0).tolist()
    names = [class_names[c] if c < len(class_names) else str(c) for c in range(metric.num_classes)]
    seen = [c for c, v in enumerate(mean_class) if not math.isnan(v)]
    summary: dict = {
        "test_miou": math.fsum(sets["miou"]) / len(sets["miou"]),
        "test_fbiou": math.fsum(sets["fbiou"]) / len(sets["fbiou"]),
        "per_class_iou": {names[c]: mean_class[c] for c in seen},
    }
    if set_labels is not None:
        if len(set_labels) != metric.num_sets:
            raise ValueError(f"{len(set_labels)} set labels for a metric of {metric.num_sets} episode sets")
        summary["episode_sets"] = list(set_labels)
        for key in ("miou", "fbiou"):
            summary[f"{key}_per_set"] = sets[key]
            summary[f"{key}_spread"] = spread(sets[key])
        table = per_set_class.tolist()
        summary["per_class_iou_per_set"] = {
            names[c]: [None if math.isnan(row[c]) else row[c] for row in table] for c in seen
        }
    return summary


def logged_values(summary: dict, stage: str = "test") -> dict[str, float]:
    """The scalars of :func:`summarize` under logger keys: ``{stage}/miou``, ``{stage}/fbiou``,
    ``{stage}/iou/<class>``; with episode sets also ``{stage}/<set>/miou`` (and fbiou),
    ``{stage}/miou_std``, ``{stage}/miou_ci95_low`` and ``{stage}/miou_ci95_high`` (and fbiou)."""
    values = {f"{stage}/miou": summary["test_miou"], f"{stage}/fbiou": summary["test_fbiou"]}
    values.update({f"{stage}/iou/{name}": v for name, v in summary["per_class_iou"].items()})
    for i, label in enumerate(summary.get("episode_sets", [])):
        for key in ("miou", "fbiou"):
            values[f"{stage}/{label}/{key}"] = summary[f"{key}_per_set"][i]
    if len(summary.get("episode_sets", [])) > 1:
        for key in ("miou", "fbiou"):
            for part in ("std", "ci95_low", "ci95_high"):
                values[f"{stage}/{key}_{part}"] = summary[f"{key}_spread"][part]
    return values


def spread_line(summary: dict) -> str:
    """A one-line report of :func:`summarize`: mean, std and 95% interval over the episode sets."""
    labels = summary.get("episode_sets", [])
    if len(labels) < 2:
        return f"test mIoU {summary['test_miou']:.2f}, FB-IoU {summary['test_fbiou']:.2f}"
    parts = []
    for key, name in (("miou", "mIoU"), ("fbiou", "FB-IoU")):
        s = summary[f"{key}_spread"]
        parts.append(
            f"{name} {s['mean']:.2f} +- {s['std']:.2f} (95% CI {s['ci95_low']:.2f}-{s['ci95_high']:.2f})"
        )
    per_set = ", ".join(f"{lab} {v:.2f}" for lab, v in zip(labels, summary["miou_per_set"]))
    return f"test {'; '.join(parts)} over {len(labels)} episode sets (mIoU {per_set})"
