"""Few-shot segmentation networks (plain ``nn.Module``s) and their registry.

A new model is one subclass of :class:`FewShotSegmenter` plus one line in ``MODELS``.
"""

from fss.models.asnet import ASNet
from fss.models.backbone import Backbone
from fss.models.base import FewShotSegmenter
from fss.models.hsnet import HSNet

MODELS: dict[str, type[FewShotSegmenter]] = {
    "hsnet": HSNet,
    "asnet": ASNet,
}

__all__ = ["MODELS", "ASNet", "Backbone", "FewShotSegmenter", "HSNet", "build_model"]


def build_model(name: str, **kwargs) -> FewShotSegmenter:
    """Instantiate the model registered as ``name`` (``hsnet``, ``asnet``, ``vat``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: choose one of {', '.join(MODELS)} (option model.net)"
        ) from None
    return cls(**kwargs)
