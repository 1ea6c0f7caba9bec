"""Few-shot segmentation networks (plain ``nn.Module``s) and their registry.

A new model is one subclass of :class:`FewShotSegmenter` plus one line in ``MODELS``.
"""

from fss.models.asnet import ASNet
from fss.models.backbone import Backbone
from fss.models.base import FewShotSegmenter
from fss.models.hsnet import HSNet
from fss.models.vat import VAT

MODELS: dict[str, type[FewShotSegmenter]] = {
    "hsnet": HSNet,
    "asnet": ASNet,
    "vat": VAT,
}

__all__ = ["MODELS", "ASNet", "Backbone", "FewShotSegmenter", "HSNet", "VAT", "build_model"]


def build_model(name: str, **kwargs) -> FewShotSegmenter:
    """Instantiate the model registered as ``name`` (``hsnet``, ``asnet``, ``vat``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: choose one of {', '.join(MODELS)} (option model.net)"
        ) from None
    return cls(**kwargs)
