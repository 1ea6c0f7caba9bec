"""The few-shot segmentation metrics of the HSNet protocol: per-class foreground IoU (mIoU) and FB-IoU.

Over all episodes of an evaluation, the intersection and union of the foreground and of the
background are summed *per class* (the episode's ``class_id``). Then

* IoU_c = fg_inter_c / max(fg_union_c, 1) for each class c, and mIoU = 100 x mean_c IoU_c over
  the classes seen at least once;
* FB-IoU = 100 x mean over {background, foreground} of (sum_c inter) / (sum_c union).

Pixels whose target is 255 (ignore) count in neither the prediction nor the target, as in the
reference evaluator. See ``docs/metrics.md``.

For FS-CS episodes (:mod:`fss.data.fscs`), :class:`ExactRatio` (the classification's 0/1 exact ratio)
and :class:`FSCSIoU` (the (N+1)-class segmentation's mIoU) follow the iFSL evaluator; see ``docs/fscs.md``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

IGNORE_INDEX = 255


class FewShotIoU(Metric):
    """Accumulates per-class foreground/background intersection and union over episodes.

    Args:
        num_classes: size of the global class index space (``class_id`` must be below it);
            the state is a few int64 tensors of this width, so a generous value is cheap.
        ignore_index: target value excluded from both prediction and target.

    States (int64, summed across processes):
        inter: [2, num_classes] intersection per (background, foreground) and class.
        union: [2, num_classes] union per (background, foreground) and class.
        seen:  [num_classes] number of episodes per class.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    inter: Tensor
    union: Tensor
    seen: Tensor

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # int64: float32 counts stop being exact above 2**24 pixels (a few hundred COCO episodes)
        self.add_state("inter", torch.zeros(2, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(2, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("seen", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, class_id: Tensor) -> None:
        """Add a batch of episodes.

        Args:
            pred: [B, H, W] integer prediction in {0, 1}.
            target: [B, H, W] integer target in {0, 1, ignore_index}.
            class_id: [B] global class index of each episode.
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

    def _class_iou(self) -> Tensor:
        """[2, num_classes] IoU (float64, 0..1) per (background, foreground) and class."""
        return self.inter.double() / self.union.clamp(min=1).double()

    def compute(self) -> dict[str, Tensor]:
        """``{"miou": ..., "fbiou": ...}`` as float32 scalars in percent (0 before any update)."""
        seen = self.seen > 0
        if not bool(seen.any()):
            zero = torch.zeros((), device=self.inter.device)
            return {"miou": zero, "fbiou": zero.clone()}
        miou = self._class_iou()[1, seen].mean()
        # classes never seen have zero counts, so summing over all classes sums over the seen ones
        fbiou = (self.inter.sum(dim=1).double() / self.union.sum(dim=1).clamp(min=1).double()).mean()
        return {"miou": (100 * miou).float(), "fbiou": (100 * fbiou).float()}

    def per_class_iou(self) -> Tensor:
        """Foreground IoU per class [num_classes] in percent, NaN for classes never seen.

        Synchronised across processes like :meth:`compute`.
        """
        with self.sync_context():
            iou = 100 * self._class_iou()[1]
            iou[self.seen == 0] = float("nan")
        return iou.float()


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
