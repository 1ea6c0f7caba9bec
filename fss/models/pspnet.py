"""PSPNet, BAM's base learner (stage 1 of BAM's two-stage training): a semantic segmenter of the base
classes of a fold, trained by ``fss fit`` on the same episodic data modules (``data.class_maps: true``).

Same modules as the reference's ``model/PSPNet.py`` (chunbolang/BAM): the dilated deep-stem ResNet
or VGG-16-BN, fine-tuned (``DilatedResNet(trainable=True)``, ``VGG16BN(trainable=True)``), PSPNet's pyramid pooling and classifier
(:class:`~fss.models.bam.PSPHead`: 1 + C_base output channels). Training: cross-entropy (ignore 255)
of the logits, upsampled to the image, against the query's class map with each base class ``c`` at
channel ``1 + rank of c among the base classes`` and every other class (the fold's novel classes)
as background, as the reference's base-learner data does. The reference trains the head at 10x the
backbone's learning rate: the head is named ``decoder`` so that ``model.decoder_lr`` gives it its
own rate.

Only the query image of each episode is used; the base classes are the data module's training
classes, recorded in the checkpoint (``base_class_ids``), which stage 2 reads
(``BAM(base_learner=<this checkpoint>)``).

As a ``FewShotSegmenter`` its episode logits are "any base class" against background (the
supports are ignored); stage-1 configs do not validate on the held-out fold's episodes (whose
objects are novel classes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fss.backbones import FeatureBackbone
from fss.masking import SupportMasking
from fss.metrics import IGNORE_INDEX
from fss.models.bam import PSPHead, base_class_labels
from fss.models.base import FewShotSegmenter


class PSPNet(FewShotSegmenter):
    """BAM's base learner: PSPNet over the base classes of a fold (module docstring).

    Args:
        backbone: a :class:`~fss.backbones.DilatedResNet` or :class:`~fss.backbones.VGG16BN`
            (``trainable: true`` fine-tunes it, as the reference does) or another backbone (its
            deepest map is used: ``layer4``, 2048 or 512 channels).
        masking: unused (the base learner sees no supports); kept for the common signature.
        weights: weights of a backbone given by name.
        num_base_classes: C, the number of base classes (PASCAL 15, COCO 60, synthetic 36); checked
            against the data's training classes when fitting.
        hidden: channels of the classifier's 3x3 convolution (512).
    """

    learner_name = "decoder"
    num_levels = 1
    fuses_shots = True

    def __init__(
        self,
        backbone: FeatureBackbone | str = "dilated_resnet50",
        masking: SupportMasking | str = "fm",
        weights: str | None = "pretrained",
        num_base_classes: int = 15,
        hidden: int = 512,
    ) -> None:
        super().__init__(backbone=backbone, masking=masking, weights=weights)
        channels = self.backbone.feature_info[-1].channels
        self.decoder = PSPHead(channels, 1 + num_base_classes, hidden)
        #: global class id of each output channel 1..C (-1 until the data's classes are known)
        self.register_buffer("base_class_ids", torch.full((num_base_classes,), -1, dtype=torch.long))

    def set_train_classes(self, class_ids: list[int]) -> None:
        """Record the data's training classes as the base classes (channel ``1 + i`` = ``sorted(ids)[i]``)."""
        if len(class_ids) != len(self.base_class_ids):
            raise ValueError(
                f"PSPNet: the data has {len(class_ids)} training classes but model.net.init_args."
                f"num_base_classes is {len(self.base_class_ids)}; set it to {len(class_ids)}"
            )
        self.base_class_ids.copy_(torch.tensor(sorted(class_ids)))

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The head (``decoder.*``) and, when it is trainable, the backbone (``backbone.*``)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def semantic_logits(self, img: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> logits [B, 1 + C, H, W] (background, then the base classes)."""
        logits = self.decoder(self.backbone(img)[-1])
        return F.interpolate(logits, img.shape[-2:], mode="bilinear", align_corners=True)

    def base_labels(self, classes: Tensor) -> Tensor:
        """Class maps [B, H, W] (0 background, c + 1, 255) -> channel labels: base class -> its channel,
        any other class -> 0, ignore stays 255."""
        return base_class_labels(classes, self.base_class_ids)

    def training_loss(
        self, batch: dict[str, Any], criterion: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Cross-entropy over the base classes; the logits returned are the episode class's channel
        against the rest (the task's training mIoU)."""
        if "query_classes" not in batch:
            raise ValueError(
                "PSPNet (BAM's base learner) trains on the query's class map: set data.class_maps: true"
            )
        if (self.base_class_ids < 0).any():
            raise ValueError("PSPNet: base classes unknown; fit it through the task (which sets them)")
        logits = self.semantic_logits(batch["query_img"])
        loss = F.cross_entropy(logits, self.base_labels(batch["query_classes"]), ignore_index=IGNORE_INDEX)
        own = self.base_labels(batch["class_id"] + 1)  # [B] the episode class's channel
        own_logit = logits.gather(1, own.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[-2:]))
        others = logits.scatter(1, own.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[-2:]), float("-inf"))
        binary = torch.cat([others.logsumexp(dim=1, keepdim=True), own_logit], dim=1)
        return loss, binary, {}

    def forward_shots(self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor) -> Tensor:
        """Logits [B, 1, 2, H, W] of "any base class" against background (the supports are ignored)."""
        logits = self.semantic_logits(query_img)
        binary = torch.stack([logits[:, 0], logits[:, 1:].logsumexp(dim=1)], dim=1)
        return binary.unsqueeze(1)
