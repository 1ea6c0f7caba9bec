"""The few-shot segmentation metrics of the HSNet protocol: per-class foreground IoU (mIoU) and FB-IoU.

Over all episodes of an evaluation, the intersection and union of the foreground and of the
background are summed *per class* (the episode's ``class_id``). Then

* IoU_c = fg_inter_c / max(fg_union_c, 1) for each class c, and mIoU = 100 x mean_c IoU_c over
  the classes seen at least once;
* FB-IoU = 100 x mean over {background, foreground} of (sum_c inter) / (sum_c union).

Pixels whose target is 255 (ignore) count in neither the prediction nor the target, as in the
reference evaluator. See ``docs/metrics.md``.
"""

from __future__ import annotations

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
