"""The LightningModule of every experiment: a few-shot segmenter, its loss, metrics and optimizer.

:class:`FewShotSegmentationTask` builds its network from three typed options, ``net``, ``backbone``
and ``masking`` (registered names or classes with options; see ``fss.components``), so that configs
and the CLI can say ``--model.net hsnet --model.backbone resnet50 --model.masking fm``.

* training: cross-entropy (ignore index 255) on the logits [B, 2, H, W] (mean over the K shots), or
  the network's own training loss (``FewShotSegmenter.training_loss``: BAM adds its auxiliary term,
  logged as ``train/loss_<term>``);
  the training mIoU/FB-IoU use the argmax of those logits, as the reference training loop does;
* validation / test: the k-shot prediction rule (``kshot_rule``) on the per-shot logits, the same
  loss for monitoring, and the metrics of ``fss.metrics.FewShotIoU``. With
  ``use_original_imgsize`` batches (an ``org_query_mask`` key), each episode is predicted and
  scored at its original mask size;
* optimizer: Adam (default, HSNet/ASNet), AdamW (VAT) or SGD (BAM) over the network's trainable
  parameters only (``FewShotSegmenter.trainable_parameters``: the learner's; the backbone is frozen
  and stays in eval mode, except in PSPNet, BAM's base learner). ``decoder_lr`` gives the parameters
  whose name contains ``decoder`` their own group (VAT's recipe; PSPNet's 10x head);
  ``scheduler: cosine`` anneals every group from its lr to ``min_lr`` over ``trainer.max_epochs``
  epochs, stepped once per epoch; ``scheduler: poly`` decays it every step (BAM, PSPNet).

Logged keys: ``{train,val,test}/loss`` (epoch means), ``{train,val,test}/miou`` and
``{train,val,test}/fbiou`` (computed over the epoch), and ``train/loss_step``. The test also logs
the IoU of every class (``test/iou/<class>``) and, when the data module evaluates several episode
sets (``data.test_seeds``), each set's values (``test/seed<s>/miou``, ``test/seed<s>/fbiou``) and
their spread (``test/miou_std``, ``test/miou_ci95_low``, ``test/miou_ci95_high``, and for FB-IoU);
``test/miou`` is then the mean over the sets. See :func:`fss.metrics.summarize`.

**GFSS test** (``data.gfss``; ``docs/models.md``): on generalized few-shot test episodes (they carry
``gfss_mask``) a model with a base learner (BAM's ``forward_outputs``: ``final`` and ``base`` logits) is
also scored by :class:`~fss.metrics.GFSSIoU` on :func:`~fss.metrics.merge_gfss` of its two outputs
(``gfss_merge``, ``gfss_tau``): ``test/gfss/{miou_n,miou_b,miou_t,fbiou,piou}``; the FS-S metrics
score the novel class's 0/1 mask of the same episodes.

**FS-CS mode** (``fscs``, linked from ``data.fscs``; ``docs/fscs.md``): the network runs on N-way
episodes through the iFSL head (``fss.models.ifsl``): per-way foreground maps, the background as the
mean over ways, class presence from the foreground maps. Training minimises L_S (the (N+1)-class NLL)
or, with ``weak`` (linked from ``data.support_label: tag``), L_C (class tags only), never a network's
own ``training_loss`` terms; in training the ways' classes go to the network (``way_logits``: BAM
leaves each way's class out of its base map). Validation and
test predict with the reference's K-shot rule. Logged: ``{train,val,test}/loss``,
``{train,val,test}/er`` (:class:`~fss.metrics.ExactRatio`) and ``{train,val,test}/miou``
(:class:`~fss.metrics.FSCSIoU`), both synchronised across processes. With ``fscs`` off nothing
changes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor

from fss.backbones import FeatureBackbone
from fss.components import (
    BackboneName,
    MaskingName,
    NetBuilder,
    NetName,
    build_backbone_option,
    build_masking_option,
    build_net,
    describe_options,
)
from fss.masking import SupportMasking
from fss.metrics import (
    IGNORE_INDEX,
    ExactRatio,
    FewShotIoU,
    FSCSIoU,
    GFSSIoU,
    GFSSMerge,
    IgnorePixels,
    gfss_logged_values,
    logged_values,
    merge_gfss,
    summarize,
    summarize_gfss,
)
from fss.models import ifsl
from fss.models.base import aggregate_shots

Stage = Literal["train", "val", "test"]

#: the options that hold objects (their hyper-parameters are descriptions of what was built)
OBJECT_OPTIONS = ("net", "backbone", "masking")

# Lightning warns about submodules left in eval mode at the start of fit: the frozen backbone is,
# on purpose (its BatchNorm statistics must not move).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def masked_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the non-ignored pixels (0 when every pixel is ignored).

    Same value as ``F.cross_entropy(logits, target, weight, ignore_index=255)`` whenever a pixel
    is valid, but never NaN for an all-ignore batch.

    Args:
        logits: [B, 2, H, W].
        target: [B, H, W] long in {0, 1, 255}.
        weight: optional [2] class weights (background, foreground).
    """
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = target != IGNORE_INDEX
    if weight is None:
        denom = valid.sum()
    else:
        denom = weight[target.clamp(max=1)].mul(valid).sum()
    return total / denom.clamp(min=1)


class FewShotSegmentationTask(pl.LightningModule):
    """Train and evaluate a few-shot segmenter.

    Args:
        net: the network: a name of ``fss.models.MODELS`` (listed in the type below) or a
            :class:`~fss.models.FewShotSegmenter` class with its own options
            (``class_path: fss.models.VAT``, ``init_args: {benchmark: pascal}``).
        backbone: the frozen backbone: a name of ``fss.backbones.BACKBONES`` (its standard pretrained
            weights) or a :class:`~fss.backbones.FeatureBackbone` class with options
            (``class_path: fss.backbones.ResNet``, ``init_args: {name: resnet18, weights: null}``).
        masking: the support masking: a name of ``fss.masking.MASKINGS`` or a
            :class:`~fss.masking.SupportMasking` class.
        lr: learning rate (HSNet and ASNet: 1e-3 with Adam; VAT: 5e-4 with AdamW).
        kshot_rule: how K > 1 shots are combined at evaluation: ``vote`` (reference) or ``mean``.
        num_classes: width of the metric state (global class ids must be below it); the CLI
            links it from the data module's ``num_classes``.
        fg_weight: weight of the foreground class in the loss (1.0 = the references' plain CE).
        pretrained: path of a reference or published checkpoint loaded into the network with
            ``load_reference_state_dict`` (e.g. to test the authors' weights).
        optimizer: ``adam`` (HSNet, ASNet references), ``adamw`` (VAT reference) or ``sgd`` (with
            ``momentum``: BAM and PSPNet, the prototype family).
        weight_decay: weight decay of every parameter group (0 in all three references; Adam's is
            an L2 penalty, AdamW's is decoupled).
        decoder_lr: learning rate of the learner parameters whose name contains ``decoder`` (VAT's
            second parameter group); None: one group at ``lr``.
        scheduler: ``none`` (constant lr, all references' shipped configs), ``cosine``
            (``CosineAnnealingLR`` with ``T_max = trainer.max_epochs``, stepped per epoch) or ``poly``
            (the prototype family's: ``lr * (1 - step / total_steps) ** poly_power`` every step, over
            ``trainer.estimated_stepping_batches``).
        min_lr: the cosine schedule's final learning rate (``eta_min``; VAT's 1e-6).
        fscs: FS-CS mode (N-way episodes, the iFSL head, ER and FS-CS mIoU); the CLI links it from
            ``data.fscs``.
        weak: in FS-CS mode, train with the classification loss L_C only (class tags, iFSL's
            ASNet_w); the CLI links it from ``data.support_label`` (``tag``).
        support_mask_values: in FS-CS mode, ``binary`` (0/1 support masks, as the data modules give
            them) or ``way_index`` (way n's masks scaled to n + 1 before the network, as the iFSL
            reference's loaders do: needed to reproduce its N > 1-way numbers exactly).
        fscs_ignore_pixels: how the FS-CS mIoU scores ignore (255) query pixels: ``background`` (the
            iFSL evaluator, default) or ``ignore`` (see :class:`~fss.metrics.FSCSIoU`).
        momentum: SGD's momentum (0.9 in BAM).
        poly_power: the poly schedule's exponent (0.9 in BAM).
        gfss_merge: with GFSS test episodes (``data.gfss``), how the base learner's prediction and the
            few-shot one are merged (:func:`fss.metrics.merge_gfss`): ``final`` (BAM's Eq. 18, its
            default) or ``base`` (its Eq. S1).
        gfss_tau: the GFSS threshold on the few-shot foreground probability (BAM's ``merge_tau``, 0.9).
    """

    #: hyperparameters that do not describe the network: with ``--ckpt_path`` an explicit value on the
    #: command line or in the config wins over the checkpoint's (every other one must match it)
    RUN_SETTINGS: tuple[str, ...] = (
        "lr",
        "kshot_rule",
        "num_classes",
        "fg_weight",
        "optimizer",
        "weight_decay",
        "decoder_lr",
        "scheduler",
        "min_lr",
        "fscs",
        "weak",
        "support_mask_values",
        "fscs_ignore_pixels",
        "momentum",
        "poly_power",
        "gfss_merge",
        "gfss_tau",
    )
    #: hyperparameters that only initialise the network: ignored when a checkpoint is loaded
    INIT_ONLY: tuple[str, ...] = ("pretrained",)

    def __init__(
        self,
        net: NetName | NetBuilder = "hsnet",
        backbone: FeatureBackbone | BackboneName = "resnet50",
        masking: SupportMasking | MaskingName = "hm",
        lr: float = 1e-3,
        kshot_rule: Literal["vote", "mean"] = "vote",
        num_classes: int = 1000,
        fg_weight: float = 1.0,
        pretrained: str | None = None,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        weight_decay: float = 0.0,
        decoder_lr: float | None = None,
        scheduler: Literal["none", "cosine", "poly"] = "none",
        min_lr: float = 1e-6,
        fscs: bool = False,
        weak: bool = False,
        support_mask_values: ifsl.SupportMaskValues = "binary",
        fscs_ignore_pixels: IgnorePixels = "background",
        momentum: float = 0.9,
        poly_power: float = 0.9,
        gfss_merge: GFSSMerge = "final",
        gfss_tau: float = 0.9,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(OBJECT_OPTIONS))  # objects: described below
        if fg_weight <= 0:
            raise ValueError(f"model.fg_weight must be positive, got {fg_weight}")
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"model.optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}")
        if scheduler not in ("none", "cosine", "poly"):
            raise ValueError(f"model.scheduler must be 'none', 'cosine' or 'poly', got {scheduler!r}")
        for name, value in (("lr", lr), ("decoder_lr", decoder_lr), ("min_lr", min_lr)):
            if value is not None and value < 0:
                raise ValueError(f"model.{name} must be non-negative, got {value}")
        if weight_decay < 0:
            raise ValueError(f"model.weight_decay must be non-negative, got {weight_decay}")
        if gfss_merge not in ("final", "base"):
            raise ValueError(f"model.gfss_merge must be 'final' or 'base', got {gfss_merge!r}")
        if not 0 <= gfss_tau < 1:
            raise ValueError(f"model.gfss_tau must be in [0, 1), got {gfss_tau}")
        if support_mask_values not in ("binary", "way_index"):
            raise ValueError(
                f"model.support_mask_values must be 'binary' or 'way_index', got {support_mask_values!r}"
            )
        self.net = build_net(net, build_backbone_option(backbone), build_masking_option(masking))
        # what was built, in the config form: fss test --ckpt_path and load_from_checkpoint rebuild it
        described = describe_options(self.net)
        self.hparams.update(described)
        self._hparams_initial.update(described)
        if pretrained is not None:
            self.net.load_reference_state_dict(pretrained)
        class_weight = None if fg_weight == 1.0 else torch.tensor([1.0, fg_weight])
        self.register_buffer("class_weight", class_weight, persistent=False)
        # one metric per stage (attribute names, not a ModuleDict: "train" is a Module method)
        for stage in ("train", "val", "test"):
            if fscs:
                setattr(self, f"{stage}_iou", FSCSIoU(num_classes, ignore_pixels=fscs_ignore_pixels))
                setattr(self, f"{stage}_er", ExactRatio())
            else:
                setattr(self, f"{stage}_iou", FewShotIoU(num_classes))
        #: names of the test episode sets (``data.test_seeds``), ``None`` for one set
        self.test_set_labels: list[str] | None = None
        #: the GFSS metric of a test on GFSS episodes (``data.gfss``), else ``None``
        self.test_gfss: GFSSIoU | None = None

    def setup(self, stage: str) -> None:
        """Before fitting, tell the network the data's training classes (BAM's base learner records
        them); before a test, one metric slot per test episode set of the data module
        (``test_set_labels``)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and hasattr(datamodule, "train_class_ids"):
            self.net.set_train_classes(list(datamodule.train_class_ids))
        if stage != "test":
            return
        labels = getattr(datamodule, "test_set_labels", None)
        if self.hparams.fscs:
            if labels and len(labels) > 1:
                raise ValueError(
                    "data.test_seeds with several episode sets is not supported with FS-CS episodes "
                    "(data.fscs: true) yet: test one seed per run"
                )
            return
        self.test_set_labels = list(labels) if labels else None
        num_sets = len(labels) if labels else 1
        if self.test_iou.num_sets != num_sets:
            self.test_iou = FewShotIoU(self.hparams.num_classes, num_sets=num_sets)
        self.test_gfss = None
        if getattr(datamodule, "gfss", False):
            if not (hasattr(self.net, "forward_outputs") and hasattr(self.net, "base_learner")):
                raise ValueError(
                    f"data.gfss: generalized few-shot tests need a model with a base learner (BAM); "
                    f"{type(self.net).__name__} has none"
                )
            base_ids = sorted(datamodule.train_class_ids)
            self.net.set_train_classes(base_ids)  # checks the base learner's classes (BAM)
            self.test_gfss = GFSSIoU(base_ids, list(datamodule.eval_class_ids), num_sets=num_sets)

    def class_names(self) -> list[str]:
        """The data module's class names (empty without one)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return list(getattr(datamodule, "class_names", None) or [])

    # -- model -----------------------------------------------------------------------------
    def forward(self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor) -> Tensor:
        """Logits [B, 2, H, W] (mean over shots) for query [B,3,H,W], supports [B,K,3,H,W], masks [B,K,H,W]."""
        return self.net(query_img, support_imgs, support_masks)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy of logits [B,2,H,W] against target [B,H,W], ignoring 255 pixels."""
        return masked_cross_entropy(logits, target, self.class_weight)

    def metric(self, stage: Stage) -> FewShotIoU | FSCSIoU:
        """The segmentation metric object of ``stage`` (:class:`FSCSIoU` in FS-CS mode)."""
        return getattr(self, f"{stage}_iou")

    def metric_values(self, stage: Stage) -> dict[str, Tensor]:
        """The epoch's metrics of ``stage`` (a collective under DDP: every process calls it).

        ``{"miou", "fbiou"}``, or in FS-CS mode ``{"er", "miou"}`` (percent).
        """
        values = dict(self.metric(stage).compute())
        if self.hparams.fscs:
            values = {"er": getattr(self, f"{stage}_er").compute(), **values}
        return values

    # -- FS-CS ------------------------------------------------------------------------------
    def fscs_summary(self, stage: Stage, class_names: list[str]) -> dict[str, Any]:
        """``{"test_er", "test_miou", "per_class_iou": {class: IoU}}`` of an FS-CS stage, plain numbers
        (a collective under DDP: every process calls it); for ``test_results.json``."""
        values = {f"test_{k}": float(v) for k, v in self.metric_values(stage).items()}
        per_class = self.metric(stage).per_class_iou().tolist()
        names = [class_names[c] if c < len(class_names) else str(c) for c in range(len(per_class))]
        return values | {"per_class_iou": {names[c]: v for c, v in enumerate(per_class) if not math.isnan(v)}}

    def fscs_predict(self, batch: dict[str, Any], size: tuple[int, int] | None = None) -> ifsl.FSCSPrediction:
        """The iFSL head on an FS-CS batch (``fss/data/fscs.py``), predicted at ``size`` (the query's).

        In training (``self.training``) the ways' classes (``support_classes``) go to the network, as
        the episode's ``class_id`` does in FS-S training (BAM leaves each way's class out of its
        base learner's map); at evaluation they do not.
        """
        masks = batch["support_masks"]
        if self.hparams.support_mask_values == "way_index":
            masks = ifsl.way_index_masks(masks)
        query_img = batch["query_img"]
        classes = batch.get("support_classes") if self.training else None
        logits = ifsl.episode_way_logits(self.net, query_img, batch["support_imgs"], masks, classes)
        return ifsl.predict_episode(logits, size or tuple(query_img.shape[-2:]))

    def fscs_loss(self, prediction: ifsl.FSCSPrediction, batch: dict[str, Any]) -> Tensor:
        """L_C with ``weak`` (from ``query_class_presence``), else L_S (from ``query_mask``)."""
        if self.hparams.weak:
            return ifsl.classification_loss(prediction.log_probs.mean(dim=2), batch["query_class_presence"])
        return ifsl.segmentation_loss(prediction.merged, batch["query_mask"])

    def _fscs_step(self, batch: dict[str, Any], stage: Stage) -> Tensor:
        """Loss and metric updates for a batch of FS-CS episodes."""
        if "query_class_presence" not in batch:
            raise ValueError(
                "model.fscs is on but the batch is not an FS-CS episode (no query_class_presence): "
                "set data.fscs: true (the CLI links model.fscs to it)"
            )
        prediction = self.fscs_predict(batch)
        loss = self.fscs_loss(prediction, batch)
        presence, classes = batch["query_class_presence"], batch["support_classes"]
        getattr(self, f"{stage}_er").update(prediction.presence, presence)
        org_masks = batch.get("org_query_mask")
        if org_masks is None or stage == "train":
            self.metric(stage).update(prediction.mask, batch["query_mask"], classes)
        else:  # use_original_imgsize: each episode predicted and scored at its original mask size
            for i, org_mask in enumerate(org_masks):
                size = tuple(org_mask.shape[-2:])
                pred = ifsl.predict_mask_at(prediction.log_probs[i : i + 1], size)
                self.metric(stage).update(pred, org_mask.reshape(1, *size), classes[i : i + 1])
        return loss

    # -- one shared step -------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, Any], stage: Stage) -> Tensor:
        """Loss (logged) and metric update for a batch of episodes (schema: ``fss/data/episode.py``)."""
        query_img = batch["query_img"]  # [B, 3, H, W]
        if self.hparams.fscs:
            loss = self._fscs_step(batch, stage)
            self._log_loss(loss, stage, query_img.shape[0])
            return loss
        support_imgs, support_masks = batch["support_imgs"], batch["support_masks"]  # [B,K,3,H,W], [B,K,H,W]
        target, class_id = batch["query_mask"], batch["class_id"]  # [B, H, W], [B]
        episode_set = batch.get("episode_set")  # [B] with several test episode sets, else None
        metric = self.metric(stage)
        if stage == "train":
            loss, logits, terms = self.net.training_loss(batch, self.loss)
            metric.update(logits.detach().argmax(dim=1), target, class_id)
            for name, value in terms.items():
                self.log(
                    f"train/loss_{name}", value, on_epoch=True, on_step=False, batch_size=target.shape[0]
                )
        elif "gfss_mask" in batch:
            loss = self._gfss_step(batch, stage)
        else:
            shot_logits = self.net.forward_shots(query_img, support_imgs, support_masks)  # [B,K,2,H,W]
            loss = self.loss(shot_logits.mean(dim=1), target)
            org_masks = batch.get("org_query_mask")
            if org_masks is None:
                pred = aggregate_shots(shot_logits, self.hparams.kshot_rule)
                metric.update(pred, target, class_id, episode_set)
            else:  # use_original_imgsize: predict each episode at its original mask size
                for i, org_mask in enumerate(org_masks):
                    pred = aggregate_shots(
                        shot_logits[i : i + 1], self.hparams.kshot_rule, org_mask.shape[-2:]
                    )
                    one_set = None if episode_set is None else episode_set[i : i + 1]
                    metric.update(
                        pred, org_mask.reshape(1, *org_mask.shape[-2:]), class_id[i : i + 1], one_set
                    )
        self._log_loss(loss, stage, query_img.shape[0])
        return loss

    def _gfss_step(self, batch: dict[str, Any], stage: Stage) -> Tensor:
        """A batch of GFSS test episodes (``fss/data/gfss.py``): the FS-S metric on the novel class's mask,
        and the GFSS metric on the merge of the base learner and the ensemble (BAM's ``test_GFSS.py``).

        As the reference, both outputs are upsampled to the model's input size, then (with
        ``org_gfss_mask``) to the original label's size, bilinearly (``align_corners=True``), before
        the softmax, the threshold and the base learner's argmax."""
        if self.test_gfss is None:
            raise ValueError(
                "GFSS episodes need the test metric built in setup (fss test with data.gfss: true)"
            )
        outputs = self.net.forward_outputs(batch["query_img"], batch["support_imgs"], batch["support_masks"])
        size = tuple(batch["query_img"].shape[-2:])
        final, base = (_resize_logits(outputs[k], size) for k in ("final", "base"))
        target, class_id, episode_set = batch["query_mask"], batch["class_id"], batch.get("episode_set")
        loss = self.loss(final, target)
        hp, metric = self.hparams, self.metric(stage)
        org_masks, org_labels = batch.get("org_query_mask"), batch.get("org_gfss_mask")
        if org_masks is None or org_labels is None:
            metric.update(final.argmax(dim=1), target, class_id, episode_set)
            self.test_gfss.update(
                merge_gfss(final, base, hp.gfss_merge, hp.gfss_tau), batch["gfss_mask"], class_id, episode_set
            )
            return loss
        for i, (org_mask, org_label) in enumerate(zip(org_masks, org_labels)):  # each at its original size
            org_size = tuple(org_label.shape[-2:])
            one_final, one_base = (_resize_logits(x[i : i + 1], org_size) for x in (final, base))
            one_set = None if episode_set is None else episode_set[i : i + 1]
            metric.update(
                one_final.argmax(dim=1), org_mask.reshape(1, *org_size), class_id[i : i + 1], one_set
            )
            pred = merge_gfss(one_final, one_base, hp.gfss_merge, hp.gfss_tau)
            self.test_gfss.update(pred, org_label.reshape(1, *org_size), class_id[i : i + 1], one_set)
        return loss

    def gfss_summary(self) -> dict[str, Any] | None:
        """The GFSS results of the test (:func:`fss.metrics.summarize_gfss`, with the merge rule and
        threshold), ``None`` without GFSS episodes; a collective under DDP: every process calls it."""
        if self.test_gfss is None:
            return None
        summary = summarize_gfss(self.test_gfss, self.test_set_labels, self.class_names())
        return {"merge": self.hparams.gfss_merge, "merge_tau": self.hparams.gfss_tau, **summary}

    def _log_loss(self, loss: Tensor, stage: Stage, batch_size: int) -> None:
        # {stage}/loss is the epoch mean in every stage; training also shows the per-step value
        self.log(f"{stage}/loss", loss, on_epoch=True, on_step=False, batch_size=batch_size, sync_dist=True)
        if stage == "train":
            self.log(
                "train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | list[Tensor]:
        """Predicted masks: long [B, H, W], or with ``org_query_mask`` a list of B [H0, W0] masks.

        In FS-CS mode the masks are (N+1)-class (0 background, n + 1 way n).
        """
        if self.hparams.fscs:
            log_probs = self.fscs_predict(batch).log_probs
            if batch.get("org_query_mask") is None:
                return ifsl.predict_mask_at(log_probs, tuple(batch["query_img"].shape[-2:]))
            return [
                ifsl.predict_mask_at(log_probs[i : i + 1], tuple(m.shape[-2:]))[0]
                for i, m in enumerate(batch["org_query_mask"])
            ]
        args = (batch["query_img"], batch["support_imgs"], batch["support_masks"])
        rule = self.hparams.kshot_rule
        org_masks = batch.get("org_query_mask")
        if org_masks is None:
            return self.net.predict_mask(*args, rule=rule)
        shot_logits = self.net.forward_shots(*args)
        return [
            aggregate_shots(shot_logits[i : i + 1], rule, m.shape[-2:])[0] for i, m in enumerate(org_masks)
        ]

    # -- epoch ends: compute (synchronised across processes), log, reset ---------------------
    def _log_epoch_metrics(self, stage: Stage) -> None:
        metric = self.metric(stage)
        # every process computes (a collective under DDP); the values are then identical on every
        # process, and "max" returns them bit for bit (a mean may not)
        if self.hparams.fscs:
            for key, value in self.metric_values(stage).items():
                bar = key in ("miou", "er") and stage != "train"
                self.log(f"{stage}/{key}", value, prog_bar=bar, sync_dist=True, reduce_fx="max")
            getattr(self, f"{stage}_er").reset()
        elif stage == "test":
            summary = summarize(metric, self.test_set_labels, self.class_names())
            values = logged_values(summary, stage)
            gfss = self.gfss_summary()
            if gfss is not None:
                values.update(gfss_logged_values(gfss, stage))
                self.test_gfss.reset()
            for key, value in values.items():
                self.log(key, value, sync_dist=True, reduce_fx="max")
        else:
            values = metric.compute()
            self.log(
                f"{stage}/miou", values["miou"], prog_bar=stage != "train", sync_dist=True, reduce_fx="max"
            )
            self.log(f"{stage}/fbiou", values["fbiou"], sync_dist=True, reduce_fx="max")
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- optimisation ------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """The learner's trainable parameters, in one group at ``lr``, or two with ``decoder_lr``.

        Only parameters with ``requires_grad`` are included (the backbone is frozen, and VAT
        freezes the few learner parameters its forward never uses). With ``decoder_lr`` the
        first group holds every parameter whose name (relative to the learner) does not contain
        ``decoder``, the second those that do, as the VAT reference splits them.
        """
        hp = self.hparams
        named = self.net.trainable_parameters()
        if hp.decoder_lr is None:
            return [{"params": [p for _, p in named], "lr": hp.lr, "name": "learner"}]
        decoder = [p for n, p in named if "decoder" in n]
        others = [p for n, p in named if "decoder" not in n]
        if not decoder:
            raise ValueError(
                f"model.decoder_lr is set but no trainable parameter of the {type(self.net).__name__} "
                "learner has 'decoder' in its name; leave model.decoder_lr null"
            )
        return [
            {"params": others, "lr": hp.lr, "name": "learner"},
            {"params": decoder, "lr": hp.decoder_lr, "name": "decoder"},
        ]

    def configure_optimizers(self) -> torch.optim.Optimizer | OptimizerLRSchedulerConfig:
        """Adam or AdamW over :meth:`param_groups`, with the optional per-epoch cosine schedule."""
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                self.param_groups(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        else:
            optimizer_cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
            optimizer = optimizer_cls(self.param_groups(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler == "poly":
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            power = hp.poly_power
            poly = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: max(1 - step / total, 0.0) ** power
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": poly, "interval": "step"}}
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise ValueError(
                "model.scheduler: cosine anneals over trainer.max_epochs epochs; set trainer.max_epochs "
                f"(got {max_epochs})"
            )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=hp.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def _resize_logits(logits: Tensor, size: tuple[int, ...]) -> Tensor:
    """Logits [B, C, h, w] resized bilinearly (``align_corners=True``, the references') to ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, tuple(size), mode="bilinear", align_corners=True)
