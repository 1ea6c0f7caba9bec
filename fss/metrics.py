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

For FS-CS episodes (:mod:`fss.data.fscs`), :class:`ExactRatio` (the classification's 0/1 exact ratio)
and :class:`FSCSIoU` (the (N+1)-class segmentation's mIoU) follow the iFSL evaluator; see ``docs/fscs.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

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


# ------------------------------------------------------------------------------------------------ FS-CS
#: how FS-CS target pixels equal to ``ignore_index`` are scored (see :class:`FSCSIoU`)
IgnorePixels = Literal["background", "ignore"]


class ExactRatio(Metric):
    """FS-CS classification: the 0/1 exact ratio (ER), the percentage of episodes whose N class
    presence predictions are all correct (iFSL, ``AverageMeter.update_cls`` / ``compute_cls_er``).

    States (int64, summed across processes): ``correct`` (episodes with every way right), ``total``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` [B, N], class presence as bool or 0/1 numbers."""
        if pred.shape != target.shape or pred.dim() != 2:
            raise ValueError(
                f"ExactRatio needs pred and target of one shape [B, N], got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}"
            )
        exact = (pred.bool() == target.bool()).all(dim=1)
        self.correct += exact.sum()
        self.total += exact.numel()

    def compute(self) -> Tensor:
        """ER in percent (float32 scalar; 0 before any update)."""
        return (100 * self.correct.double() / self.total.clamp(min=1).double()).float()


class FSCSIoU(Metric):
    """FS-CS segmentation: per-class IoU of (N+1)-class predictions, as the iFSL evaluator counts it.

    For each episode with support classes ``[c_1, ..., c_N]``, prediction ``p`` and target ``t`` in
    ``{0: background, n: way n}``, the intersection ``|p == n and t == n|`` and union
    ``|p == n| + |t == n| - intersection`` of each label n = 0..N are added to the counts of class
    ``c_n`` (n >= 1) and of the background (n = 0). Then IoU_c = inter_c / max(union_c, 1), and the
    mIoU (percent) is the mean over the classes that were a support class at least once; the
    background is counted but, as in the reference, not part of the mean (:meth:`background_iou`).
    The reference averages over all classes of the evaluated fold: the same whenever every fold class
    is drawn as a support class (certain with the protocol's 1000 episodes).

    Args:
        num_classes: size of the global class index space (support classes must be below it).
        ignore_index: the target value of ignored pixels (PASCAL's boundaries).
        ignore_pixels: how those pixels are scored. ``background`` (default): as background in the
            target, prediction kept, which is what the iFSL evaluator computes (its ignore step compares
            the 0/1 boundary map with 255 and never fires), so numbers match the iFSL paper's tables;
            ``ignore``: left out of prediction and target (what that step intends, and what the FS-S
            evaluator does).

    States (int64, summed across processes): ``inter`` and ``union`` [num_classes + 1] (index 0 the
    background, ``c + 1`` class ``c``), ``seen`` [num_classes] (episodes with class c as a way).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    inter: Tensor
    union: Tensor
    seen: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        ignore_pixels: IgnorePixels = "background",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if ignore_pixels not in ("background", "ignore"):
            raise ValueError(f"ignore_pixels must be 'background' or 'ignore', got {ignore_pixels!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.ignore_pixels = ignore_pixels
        self.add_state("inter", torch.zeros(num_classes + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("seen", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, support_classes: Tensor) -> None:
        """Add a batch of episodes.

        Args:
            pred: [B, H, W] integer prediction in {0..N}.
            target: [B, H, W] integer target in {0..N, ignore_index}.
            support_classes: [B, N] distinct global class ids of each episode's ways.
        """
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape [B, H, W]"
            )
        if support_classes.dim() != 2 or support_classes.shape[0] != pred.shape[0]:
            raise ValueError(
                f"support_classes must be [B={pred.shape[0]}, N], got {tuple(support_classes.shape)}"
            )
        batch, way = support_classes.shape
        support_classes = support_classes.long()
        if support_classes.numel() and (
            int(support_classes.min()) < 0 or int(support_classes.max()) >= self.num_classes
        ):
            raise ValueError(
                f"support classes {support_classes.tolist()} outside [0, {self.num_classes}): raise "
                "num_classes (model.num_classes, linked from the data module's num_classes)"
            )
        bins = way + 1
        pred = pred.reshape(batch, -1).long()
        target = target.reshape(batch, -1).long()
        ignored = target == self.ignore_index
        if self.ignore_pixels == "background":
            target = target.masked_fill(ignored, 0)
            valid = torch.ones_like(ignored)
        else:
            valid = ~ignored
        bad = valid & ((pred < 0) | (pred > way) | (target < 0) | (target > way))
        if bool(bad.any()):
            found = torch.cat([pred[bad], target[bad]]).unique().tolist()
            raise ValueError(
                f"FS-CS labels must lie in 0..{way} (or {self.ignore_index} in the target), found {found}"
            )
        offset = torch.arange(batch, device=pred.device)[:, None] * bins  # [B, 1]

        def counts(labels: Tensor, keep: Tensor) -> Tensor:
            # per-episode histogram of the labels 0..N over the kept pixels: [B, N+1]
            return torch.bincount((labels + offset)[keep], minlength=batch * bins).view(batch, bins)

        area_pred = counts(pred, valid)
        area_target = counts(target, valid)
        area_inter = counts(pred, valid & (pred == target))
        area_union = area_pred + area_target - area_inter
        index = torch.cat([torch.zeros_like(support_classes[:, :1]), support_classes + 1], dim=1)  # [B, N+1]
        self.inter.index_add_(0, index.reshape(-1), area_inter.reshape(-1))
        self.union.index_add_(0, index.reshape(-1), area_union.reshape(-1))
        self.seen.index_add_(0, support_classes.reshape(-1), torch.ones_like(support_classes.reshape(-1)))

    def _iou(self) -> Tensor:
        """[num_classes + 1] IoU (float64, 0..1): background first, then every class."""
        return self.inter.double() / self.union.clamp(min=1).double()

    def compute(self) -> dict[str, Tensor]:
        """``{"miou": ...}`` in percent (float32 scalar; 0 before any update)."""
        seen = self.seen > 0
        if not bool(seen.any()):
            return {"miou": torch.zeros((), device=self.inter.device)}
        return {"miou": (100 * self._iou()[1:][seen].mean()).float()}

    def per_class_iou(self) -> Tensor:
        """IoU per class [num_classes] in percent, NaN for classes never drawn (synchronised like compute)."""
        with self.sync_context():
            iou = 100 * self._iou()[1:]
            iou[self.seen == 0] = float("nan")
        return iou.float()

    def background_iou(self) -> Tensor:
        """The background's IoU in percent over all episodes (synchronised like compute)."""
        with self.sync_context():
            return (100 * self._iou()[0]).float()


# ------------------------------------------------------------------------------------------------ GFSS
#: how the GFSS prediction merges the base learner with the few-shot (final) prediction
GFSSMerge = Literal["final", "base"]
GFSS_MERGES: tuple[str, ...] = ("final", "base")


def merge_gfss(
    final_logits: Tensor, base_logits: Tensor, merge: GFSSMerge = "final", tau: float = 0.9
) -> Tensor:
    """BAM's generalized few-shot prediction: base classes from the base learner, the novel class from
    the few-shot (ensemble) output (BAM's ``test_GFSS.py``; its paper's Eq. 18 and Eq. S1).

    A pixel is *novel* when the final foreground probability (softmax over the two channels) exceeds
    ``tau``; ``b`` is the base learner's argmax (0 background, 1..C the base classes).

    * ``final`` (Eq. 18, the reference's default): novel pixels get C + 1, every other pixel ``b``;
    * ``base`` (Eq. S1): ``b`` where ``b > 0``, else C + 1 on novel pixels and 0 elsewhere.

    Args:
        final_logits: [B, 2, H, W] the ensemble's logits (already at the evaluation size).
        base_logits: [B, 1 + C, H, W] the base learner's logits (same size).
        merge: ``final`` or ``base``.
        tau: the novel-class threshold on the foreground probability (0.9 in BAM's configs).

    Returns:
        long [B, H, W] in 0..C+1 (C + 1: the episode's novel class).
    """
    if merge not in GFSS_MERGES:
        raise ValueError(f"GFSS merge must be 'final' or 'base', got {merge!r}")
    if final_logits.shape[1] != 2 or final_logits.dim() != 4:
        raise ValueError(f"final_logits must be [B, 2, H, W], got {tuple(final_logits.shape)}")
    if (
        base_logits.dim() != 4
        or base_logits.shape[0] != final_logits.shape[0]
        or (base_logits.shape[-2:] != final_logits.shape[-2:])
    ):
        raise ValueError(
            f"base_logits must be [B, 1 + C, H, W] at the size of final_logits {tuple(final_logits.shape)}, "
            f"got {tuple(base_logits.shape)}"
        )
    novel_label = base_logits.shape[1]  # C + 1
    base = base_logits.argmax(dim=1)
    novel = final_logits.float().softmax(dim=1)[:, 1] > tau
    if merge == "final":
        return base.masked_fill(novel, novel_label)
    return base.masked_fill(novel & (base == 0), novel_label)


class GFSSIoU(Metric):
    """Generalized few-shot segmentation metrics as BAM's ``test_GFSS.py`` computes them.

    Each episode's prediction and target hold 0 (background), ``1..C`` (the base classes, in the order
    of ``base_class_ids``) and ``C + 1`` (the episode's novel class, ``class_id``); 255 in the target is
    left out of both. Per episode, the intersection and union of every label are added to the counts of
    the background, of each base class, and of the episode's novel class. Then, with
    ``IoU_k = inter_k / (union_k + 1e-10)`` (0 for a class never predicted nor present):

    * mIoU_n: mean IoU over the ``N`` novel classes; mIoU_b: over the ``C`` base classes; mIoU_t: over
      all ``C + N`` (classes never seen count as 0, as in the reference);
    * FB-IoU (the reference's): mean of the background IoU and the *pooled* foreground IoU
      ``sum_k inter_k / sum_k union_k`` over every base and novel class;
    * pIoU: that pooled foreground IoU.

    All values in percent. The reference sums float32 pixel counts; here they are exact int64.

    Args:
        base_class_ids: global class ids of the base classes 1..C, in label order.
        novel_class_ids: global class ids of the novel classes (an episode's ``class_id`` is one).
        ignore_index: the target value left out.
        num_sets: independent episode sets accumulated side by side (``data.test_seeds``).

    States (int64, summed across processes): ``inter``, ``union`` [num_sets, 1 + C + N] (background,
    base classes, novel classes).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    inter: Tensor
    union: Tensor

    def __init__(
        self,
        base_class_ids: Sequence[int],
        novel_class_ids: Sequence[int],
        ignore_index: int = IGNORE_INDEX,
        num_sets: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not base_class_ids or not novel_class_ids:
            raise ValueError("GFSSIoU needs at least one base class and one novel class")
        if set(base_class_ids) & set(novel_class_ids):
            raise ValueError(
                f"GFSSIoU: base classes {list(base_class_ids)} and novel classes {list(novel_class_ids)} overlap"
            )
        if num_sets < 1:
            raise ValueError(f"num_sets must be positive, got {num_sets}")
        self.base_class_ids = [int(c) for c in base_class_ids]
        self.novel_class_ids = [int(c) for c in novel_class_ids]
        self.ignore_index = ignore_index
        self.num_sets = num_sets
        width = 1 + len(self.base_class_ids) + len(self.novel_class_ids)
        self.add_state("inter", torch.zeros(num_sets, width, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_sets, width, dtype=torch.long), dist_reduce_fx="sum")
        #: the slot of each novel global class id (index 1 + C + n)
        self._novel_slot = {c: 1 + len(self.base_class_ids) + n for n, c in enumerate(self.novel_class_ids)}

    @property
    def novel_label(self) -> int:
        """The label of the episode's novel class in predictions and targets (C + 1)."""
        return len(self.base_class_ids) + 1

    def update(
        self, pred: Tensor, target: Tensor, class_id: Tensor, episode_set: Tensor | None = None
    ) -> None:
        """Add a batch of episodes.

        Args:
            pred: [B, H, W] integer labels in 0..C+1 (:func:`merge_gfss`).
            target: [B, H, W] integer labels in 0..C+1 or ``ignore_index``.
            class_id: [B] the global id of each episode's novel class.
            episode_set: [B] which episode set each episode belongs to (``None``: set 0).
        """
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape [B, H, W]"
            )
        batch, bins = pred.shape[0], self.novel_label + 1
        class_id = class_id.reshape(-1).long()
        if class_id.numel() != batch:
            raise ValueError(f"class_id has {class_id.numel()} entries for a batch of {batch}")
        unknown = [c for c in class_id.tolist() if c not in self._novel_slot]
        if unknown:
            raise ValueError(f"GFSS episode classes {unknown} are not novel classes {self.novel_class_ids}")
        sets = torch.zeros_like(class_id) if episode_set is None else episode_set.reshape(-1).long()
        if sets.numel() != batch or int(sets.min()) < 0 or int(sets.max()) >= self.num_sets:
            raise ValueError(
                f"episode_set {sets.tolist()} must give one set in [0, {self.num_sets}) per episode"
            )
        pred = pred.reshape(batch, -1).long()
        target = target.reshape(batch, -1).long()
        valid = target != self.ignore_index
        bad = valid & ((pred < 0) | (pred >= bins) | (target < 0) | (target >= bins))
        if bool(bad.any()):
            found = torch.cat([pred[bad], target[bad]]).unique().tolist()
            raise ValueError(
                f"GFSS labels must lie in 0..{bins - 1} (or {self.ignore_index} in the target), found {found}"
            )
        offset = torch.arange(batch, device=pred.device)[:, None] * bins

        def counts(labels: Tensor, keep: Tensor) -> Tensor:  # per-episode histogram [B, bins]
            return torch.bincount((labels + offset)[keep], minlength=batch * bins).view(batch, bins)

        area_inter = counts(pred, valid & (pred == target))
        area_union = counts(pred, valid) + counts(target, valid) - area_inter
        # columns: labels 0..C go to slots 0..C, label C+1 to the episode's novel class slot
        slots = torch.arange(bins, device=pred.device).expand(batch, bins).clone()
        slots[:, -1] = torch.tensor([self._novel_slot[c] for c in class_id.tolist()], device=pred.device)
        flat = (sets[:, None] * self.inter.shape[1] + slots).reshape(-1)
        self.inter.view(-1).index_add_(0, flat, area_inter.reshape(-1))
        self.union.view(-1).index_add_(0, flat, area_union.reshape(-1))

    def _values(self) -> dict[str, Tensor]:
        """Every value per set, float64 [num_sets], percent."""
        inter, union = self.inter.double(), self.union.double()
        iou = inter / (union + 1e-10)  # [S, 1 + C + N]
        c = len(self.base_class_ids)
        fg = inter[:, 1:].sum(dim=1) / (union[:, 1:].sum(dim=1) + 1e-10)
        bg = iou[:, 0]
        return {
            "miou_n": 100 * iou[:, 1 + c :].mean(dim=1),
            "miou_b": 100 * iou[:, 1 : 1 + c].mean(dim=1),
            "miou_t": 100 * iou[:, 1:].mean(dim=1),
            "fbiou": 100 * (bg + fg) / 2,
            "piou": 100 * fg,
        }

    def compute(self) -> dict[str, Tensor]:
        """``{"miou_n", "miou_b", "miou_t", "fbiou", "piou"}`` (float32 percent; the mean over the sets)."""
        return {k: v.mean().float() for k, v in self._values().items()}

    def compute_sets(self) -> dict[str, Tensor]:
        """Each episode set's values, float64 [num_sets] (synchronised across processes like compute)."""
        with self.sync_context():
            return self._values()

    def class_iou_sets(self) -> Tensor:
        """IoU per set and class [num_sets, C + N] in percent (base classes, then novel; synchronised)."""
        with self.sync_context():
            return 100 * (self.inter.double() / (self.union.double() + 1e-10))[:, 1:]


#: the GFSS values and how results name them
GFSS_KEYS: tuple[str, ...] = ("miou_n", "miou_b", "miou_t", "fbiou", "piou")


def summarize_gfss(
    metric: GFSSIoU, set_labels: Sequence[str] | None = None, class_names: Sequence[str] = ()
) -> dict:
    """The GFSS results as plain numbers (a collective under DDP: call on every rank).

    Returns:
        ``{"miou_n", "miou_b", "miou_t", "fbiou", "piou"}`` (percent, the mean over the episode sets),
        ``"per_class_iou": {class: IoU}`` (base classes, then novel ones; mean over the sets),
        ``"novel_classes"`` (their names); with ``set_labels`` also ``"episode_sets"``, ``"<key>_per_set"`` and
        ``"<key>_best"`` (the best set, which the reference's log also prints next to the mean).
    """
    sets = {k: v.tolist() for k, v in metric.compute_sets().items()}
    per_class = metric.class_iou_sets().mean(dim=0).tolist()
    ids = metric.base_class_ids + metric.novel_class_ids
    names = [class_names[c] if c < len(class_names) else str(c) for c in ids]
    summary: dict = {k: math.fsum(v) / len(v) for k, v in sets.items()}
    summary["per_class_iou"] = dict(zip(names, per_class))
    summary["novel_classes"] = names[len(metric.base_class_ids) :]
    if set_labels is not None:
        if len(set_labels) != metric.num_sets:
            raise ValueError(f"{len(set_labels)} set labels for a metric of {metric.num_sets} episode sets")
        summary["episode_sets"] = list(set_labels)
        for key, values in sets.items():
            summary[f"{key}_per_set"] = values
            summary[f"{key}_best"] = max(values)
    return summary


def gfss_logged_values(summary: dict, stage: str = "test") -> dict[str, float]:
    """The scalars of :func:`summarize_gfss` under logger keys ``{stage}/gfss/<key>`` (and per set)."""
    values = {f"{stage}/gfss/{key}": summary[key] for key in GFSS_KEYS}
    for i, label in enumerate(summary.get("episode_sets", [])):
        for key in GFSS_KEYS:
            values[f"{stage}/gfss/{label}/{key}"] = summary[f"{key}_per_set"][i]
    return values


def gfss_line(summary: dict) -> str:
    """A one-line report of :func:`summarize_gfss`."""
    return (
        f"GFSS mIoU_n {summary['miou_n']:.2f}, mIoU_b {summary['miou_b']:.2f}, mIoU_t {summary['miou_t']:.2f}, "
        f"FB-IoU {summary['fbiou']:.2f}, pIoU {summary['piou']:.2f}"
    )
