"""Few-shot segmentation networks (plain ``nn.Module``s) and their registry.

``MODELS`` maps a short name (``model.net: hsnet`` in a config, ``--model.net vat`` on the command
line) to a class; the class name works too (``--model.net VAT``) and takes options
(``--model.net.feature_size 8``). A new model is one subclass of :class:`FewShotSegmenter` plus
one line in ``MODELS``. :class:`PSPNet` (BAM's base learner, stage 1 of its training) is not a few-shot
model and is not registered: configs give its class path.
"""

from fss.models.asnet import ASNet
from fss.models.bam import BAM
from fss.models.base import FewShotSegmenter
from fss.models.hsnet import HSNet
from fss.models.ntrenet import NTRENet
from fss.models.pspnet import PSPNet
from fss.models.sgone import SGOne
from fss.models.vat import VAT

MODELS: dict[str, type[FewShotSegmenter]] = {
    "hsnet": HSNet,
    "asnet": ASNet,
    "vat": VAT,
    "sgone": SGOne,
    "bam": BAM,
    "ntrenet": NTRENet,
}

__all__ = [
    "BAM",
    "MODELS",
    "ASNet",
    "FewShotSegmenter",
    "HSNet",
    "NTRENet",
    "PSPNet",
    "SGOne",
    "VAT",
    "build_model",
    "model_class",
]


def model_class(name: str) -> type[FewShotSegmenter]:
    """The model registered as ``name``; a ValueError listing the names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: choose one of {', '.join(MODELS)} (option model.net), or give a "
            "class_path of a FewShotSegmenter subclass"
        ) from None


def build_model(name: str, **kwargs) -> FewShotSegmenter:
    """Instantiate the model registered as ``name`` with ``kwargs`` (``backbone``, ``masking``, ...)."""
    return model_class(name)(**kwargs)
