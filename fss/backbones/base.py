"""The interface every frozen feature extractor implements: :class:`FeatureBackbone`.

A backbone maps ImageNet-normalised images [N, 3, H, W] to a list of feature maps [N, C_i, h_i, w_i]
and describes them in ``feature_info`` (in the spirit of timm's ``feature_info``): one
:class:`FeatureInfo` per returned map with its channels, its nominal stride and its *level*.

A level is a group of maps of one shape (a ResNet stage, or a group of ViT blocks resampled to one
stride); levels are integers that grow with depth. Models never name a level: they ask for the
deepest ``n`` levels (HSNet and ASNet correlate 3, VAT 4) with :meth:`FeatureBackbone.select_levels`
and read channels and map counts from ``feature_info``. So a model written for a ResNet runs on any
backbone with enough levels.

Every backbone is frozen: no parameter requires gradients and it stays in eval mode whatever
``.train()`` is called on its parents (a test checks that BatchNorm statistics do not move).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fss.describe import RecordsInitArgs


class BackboneWeightsError(RuntimeError):
    """Weights were asked for but could not be loaded (no network, bad file)."""


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file: a plain state_dict or a checkpoint holding one under ``state_dict``."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return sd


def load_renamed_state_dict(
    module: nn.Module,
    sd: dict[str, Tensor],
    rename: Callable[[str], str],
    ignore_prefix: str,
    what: str,
    source: str,
) -> None:
    """Load ``sd`` into ``module`` after ``rename`` of each key (``module.`` prefixes dropped first).

    Keys starting with ``ignore_prefix`` after renaming (a classifier) are left out; floating tensors
    become float32; BatchNorm counters missing from files older than PyTorch 0.4.1 keep the module's.
    Any missing, unexpected or misshaped key is one :class:`BackboneWeightsError` naming ``source``,
    ``what`` (the backbone) and the option.
    """
    ours = {}
    for key, value in sd.items():
        key = rename(key.removeprefix("module."))
        if not key.startswith(ignore_prefix):
            ours[key] = value.float() if value.is_floating_point() else value
    own = module.state_dict()
    for key in own:
        if key.endswith("num_batches_tracked"):
            ours.setdefault(key, own[key])
    missing = [k for k in own if k not in ours]
    unexpected = [k for k in ours if k not in own]
    wrong = [k for k in ours if k in own and ours[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise BackboneWeightsError(
            f"{source} does not fit a {what} (option model.backbone.weights): missing keys "
            f"{missing[:4]}, unexpected keys {unexpected[:4]}, keys of another shape {wrong[:4]}"
        )
    module.load_state_dict(ours)


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone returns.

    Attributes:
        channels: C of the map [N, C, h, w].
        stride: input pixels per feature pixel (nominal: 4, 8, 16, 32 for a ResNet; 7, 14, 28 for the
            resampled levels of a ViT with 14 px patches).
        level: the group of maps of one shape the map belongs to; larger is deeper.
        module: where it is taken, for messages (``layer3.2``, ``blocks.7``).
    """

    channels: int
    stride: float
    level: int
    module: str


class FeatureBackbone(RecordsInitArgs, nn.Module, ABC):
    """Base class of the frozen backbones: images -> feature maps described by ``feature_info``.

    Subclasses set ``self.name`` (for messages), call :meth:`_describe` with the description of
    every map they can return, freeze themselves with :meth:`_freeze`, and implement
    :meth:`forward` returning the maps of :attr:`feature_info` (the selected levels) in its order.
    """

    name: str

    def __init__(self) -> None:
        super().__init__()
        self._all_info: tuple[FeatureInfo, ...] = ()
        self._levels: tuple[int, ...] = ()

    # -- description ----------------------------------------------------------------------------
    def _describe(self, info: Sequence[FeatureInfo]) -> None:
        """Record every map the backbone can return (all levels are selected until a model selects)."""
        self._all_info = tuple(info)
        self._levels = tuple(sorted({i.level for i in self._all_info}))

    @property
    def available_info(self) -> tuple[FeatureInfo, ...]:
        """Every map the backbone can return, shallowest first."""
        return self._all_info

    @property
    def levels(self) -> tuple[int, ...]:
        """The selected levels, shallowest first."""
        return self._levels

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        """The maps :meth:`forward` returns, in its order."""
        return tuple(i for i in self._all_info if i.level in self._levels)

    @property
    def feat_layers(self) -> list[int]:
        """The level of each returned map (a ResNet: its stage, 1..4)."""
        return [i.level for i in self.feature_info]

    @property
    def feat_channels(self) -> list[int]:
        """The channels of each returned map."""
        return [i.channels for i in self.feature_info]

    def select_levels(self, count: int, needed_by: str = "the model") -> tuple[int, ...]:
        """Return only the deepest ``count`` levels from now on; returns them, shallowest first.

        Raises:
            ValueError: the backbone has fewer levels (the message names the option that adds some).
        """
        available = sorted({i.level for i in self._all_info})
        if count > len(available):
            raise ValueError(
                f"{needed_by} needs {count} feature levels, but backbone {self.name} has {len(available)} "
                f"({self.describe_levels()}); give the backbone more levels (a timm backbone: "
                "model.backbone.init_args.levels)"
            )
        self._levels = tuple(available[-count:])
        return self._levels

    def describe_levels(self) -> str:
        """``level 2: 4 maps x 512 ch, stride 8; ...`` for messages and docs."""
        parts = []
        for level in sorted({i.level for i in self._all_info}):
            maps = [i for i in self._all_info if i.level == level]
            channels = sorted({i.channels for i in maps})
            parts.append(
                f"level {level}: {len(maps)} maps x {'/'.join(map(str, channels))} ch, stride {maps[0].stride:g}"
            )
        return "; ".join(parts)

    # -- frozen -----------------------------------------------------------------------------------
    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureBackbone:
        """Stay in eval mode: the backbone is frozen (BatchNorm statistics, dropout never change)."""
        return super().train(False)

    @abstractmethod
    def forward(self, img: Tensor) -> list[Tensor]:
        """ImageNet-normalised images [N, 3, H, W] -> one map [N, C_i, h_i, w_i] per ``feature_info`` entry."""


class StagedBackbone(FeatureBackbone):
    """A backbone in the five stages of the PSPNet-style references (``layer0`` = :meth:`stem`, then
    ``layer1..layer4``), which the prototype family (BAM, NTRENet) runs stage by stage: the support's
    ``layer4`` is computed from its masked ``layer3`` with :meth:`run_stages`.

    Subclasses build ``layer1..layer4``, implement :meth:`stem`, :attr:`weight_file`,
    :meth:`load_reference_state_dict` and :meth:`reference_key`, and end their ``__init__`` with :meth:`_finish`. ``trainable=True`` (BAM's
    stage 1 fine-tunes the encoder) leaves the parameters trainable and ``.train()`` working.
    """

    trainable: bool = False

    def _finish(self, weights: str | None, trainable: bool) -> None:
        """Load ``weights`` (:meth:`load_weights`), then freeze unless ``trainable``."""
        self.trainable = trainable
        self.load_weights(weights)
        if not trainable:
            self._freeze()

    def train(self, mode: bool = True) -> StagedBackbone:
        """Eval mode unless ``trainable`` (then as ``nn.Module.train``)."""
        return nn.Module.train(self, mode and self.trainable)

    #: for the missing-file message: the backbone's name in words, and where its ImageNet file comes
    #: from (``{file}``: :attr:`weight_file`)
    weights_label: str = "backbone"
    weights_origin: str = "the ImageNet weights {file}"

    @property
    @abstractmethod
    def weight_file(self) -> str:
        """The ImageNet weights file ``weights: imagenet`` reads from ``initmodel/`` (the references' folder)."""

    def load_weights(self, weights: str | None) -> None:
        """Load ``initmodel/<weight_file>`` (``imagenet``) or the file ``weights`` names (a checkpoint of
        this backbone too); None (or ``"none"``) keeps random weights. A missing file is one
        :class:`BackboneWeightsError` saying where to put it and which option to set."""
        if weights is None or weights == "none":
            return
        file = self.weight_file
        path = Path("initmodel", file) if weights == "imagenet" else Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"{self.weights_label} weights file not found: {path.absolute()}. This backbone uses "
                f"{self.weights_origin.format(file=file)}: put it at initmodel/{file} under the working directory, or pass it "
                "with --model.backbone.weights PATH, or use --model.backbone.weights null for random weights."
            )
        self.load_reference_state_dict(read_state_dict(path), source=str(path))

    @abstractmethod
    def load_reference_state_dict(self, sd: dict[str, Tensor], source: str = "the state_dict") -> None:
        """Load a state_dict in our names or the weights file's / references' names."""

    @staticmethod
    @abstractmethod
    def reference_key(key: str) -> str:
        """A backbone key (``layer0..4``) of a reference checkpoint -> ours."""

    @abstractmethod
    def stem(self, img: Tensor) -> Tensor:
        """Images [N, 3, H, W] -> the input of ``layer1`` (the references' ``layer0`` output)."""

    def run_stages(self, feat: Tensor, start: int, stop: int = 4) -> list[Tensor]:
        """The outputs of stages ``start``..``stop`` from ``feat``, the input of stage ``start``.

        ``run_stages(masked_layer3, 4)`` is the support's ``layer4`` of BAM and NTRENet: its input is
        the output of stage 3 (there, masked). ``start = 1`` takes the stem's output.
        """
        outs = []
        for stage in range(start, stop + 1):
            feat = getattr(self, f"layer{stage}")(feat)
            outs.append(feat)
        return outs

    def forward(self, img: Tensor) -> list[Tensor]:
        """Images [N, 3, H, W] -> the output [N, C_l, h_l, w_l] of each selected stage.

        Only the stages up to the deepest selected level run.
        """
        outs = self.run_stages(self.stem(img), 1, max(self.levels))
        return [outs[level - 1] for level in self.levels]
