"""The three typed parts of a model in a config: the network, its backbone and its masking.

Each of ``model.net``, ``model.backbone`` and ``model.masking`` is given in one of three forms:

* a **registered name** (``fss.models.MODELS``, ``fss.backbones.BACKBONES``, ``fss.masking.MASKINGS``):
  ``net: vat``, ``backbone: resnet50``, ``masking: fm`` -- the registered class with its defaults
  (a backbone name means its standard pretrained weights);
* a **class with options**, the jsonargparse form that LightningCLI builds::

      net:
        class_path: fss.models.VAT          # or just VAT on the command line: --model.net VAT
        init_args: {feature_size: 8}        # --model.net.feature_size 8
      backbone:
        class_path: fss.backbones.ResNet
        init_args: {name: resnet18, weights: null}   # --model.backbone.weights null

  ``fss fit --model.net.help VAT`` (``--model.backbone.help TimmBackbone``) lists a class's typed
  options; an unknown option is an error that names it. A name takes no options: to set one, use
  the class form (the shipped configs do, so ``--model.backbone.weights`` etc. work on them);
* in Python, an **object** (``ResNet("resnet18", weights=None)``, ``FeatureMasking()``), a model class
  or ``functools.partial(VAT, feature_size=8)``, or the ``{class_path, init_args}`` dict of a config.

The network is built last: ``net(backbone=<FeatureBackbone>, masking=<SupportMasking>)``
(:class:`NetBuilder`), so ``model.net``'s options are the model's own.

:func:`upgrade_model_options` turns the options of fss before the typed form (``model.net: hsnet``
with ``model.net_options``, ``model.weights``) into this form, for the error message that names the
new keys and for old checkpoints.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from fss.backbones import BACKBONES, FeatureBackbone, backbone_spec
from fss.describe import class_path, describe
from fss.masking import MASKINGS, SupportMasking, build_masking
from fss.models import MODELS, FewShotSegmenter, model_class

#: the registered names, as types (jsonargparse validates and lists them)
NetName = Literal[tuple(MODELS)]  # type: ignore[valid-type]
BackboneName = Literal[tuple(BACKBONES)]  # type: ignore[valid-type]
MaskingName = Literal[tuple(MASKINGS)]  # type: ignore[valid-type]


class NetBuilder(Protocol):
    """``model.net``: a :class:`~fss.models.FewShotSegmenter` class and its own options.

    The task calls it with the built backbone and masking. ``weights`` (the models' Python shorthand
    for a backbone given by name) is listed so that jsonargparse does not offer it as a network
    option: a backbone's weights are an option of ``model.backbone``.
    """

    def __call__(
        self, backbone: FeatureBackbone, masking: SupportMasking, weights: str | None = ...
    ) -> FewShotSegmenter: ...


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"class_path {path!r} must be a full import path (e.g. fss.models.VAT)")
    return getattr(importlib.import_module(module), name)


def _from_spec(spec: dict[str, Any], base: type, option: str) -> tuple[type, dict[str, Any]]:
    """The class and init_args of a ``{class_path, init_args}`` dict, checked against ``base``."""
    unknown = set(spec) - {"class_path", "init_args"}
    if "class_path" not in spec or unknown:
        raise ValueError(f"{option}: a dict must be {{class_path: ..., init_args: {{...}}}}, got {spec}")
    cls = _import(spec["class_path"])
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ValueError(f"{option}: {spec['class_path']} is not a {base.__name__} subclass")
    return cls, dict(spec.get("init_args") or {})


def build_net(net: Any, backbone: FeatureBackbone, masking: SupportMasking) -> FewShotSegmenter:
    """The network of ``model.net`` (name, class, builder or spec dict) on ``backbone`` and ``masking``."""
    if isinstance(net, str):
        return model_class(net)(backbone=backbone, masking=masking)
    if isinstance(net, dict):
        cls, kwargs = _from_spec(net, FewShotSegmenter, "model.net")
        return cls(backbone=backbone, masking=masking, **kwargs)
    return net(backbone=backbone, masking=masking)


def build_backbone_option(backbone: Any) -> FeatureBackbone:
    """The backbone of ``model.backbone`` (name, object or spec dict)."""
    if isinstance(backbone, FeatureBackbone):
        return backbone
    if isinstance(backbone, str):
        cls, kwargs = backbone_spec(backbone)
    elif isinstance(backbone, dict):
        cls, kwargs = _from_spec(backbone, FeatureBackbone, "model.backbone")
    else:
        raise TypeError(
            f"model.backbone must be a name, a FeatureBackbone or a class_path dict, got {backbone!r}"
        )
    return cls(**kwargs)


def build_masking_option(masking: Any) -> SupportMasking:
    """The strategy of ``model.masking`` (name, object or spec dict)."""
    if isinstance(masking, dict):
        cls, kwargs = _from_spec(masking, SupportMasking, "model.masking")
        return cls(**kwargs)
    return build_masking(masking)


def describe_options(net: FewShotSegmenter) -> dict[str, Any]:
    """``net``/``backbone``/``masking`` of a built network in the config form (for hyper-parameters).

    The network and backbone as ``{class_path, init_args}`` (every argument, defaults included); the
    masking by its registered name when it is a registered strategy without arguments.
    """
    masking = net.masking
    registered = MASKINGS.get(getattr(masking, "name", None)) is type(masking) and not masking.init_args
    return {
        "net": describe(net, skip=("backbone", "masking", "weights", *net.init_only_args)),
        "backbone": describe(net.backbone),
        "masking": masking.name if registered else describe(masking),
    }


#: the typed parts of ``model``, in the order they are built
PARTS = ("net", "backbone", "masking")


def part_form(part: str, value: Any) -> dict[str, Any]:
    """``model.<part>`` in one comparable form: ``{class_path, init_args}`` with every argument.

    A registered name, a config namespace or dict and a checkpoint's description of the same part
    give the same dict (defaults filled in from the class's signature). Arguments that only
    initialise the part are left out (a backbone's ``weights``: a checkpoint holds them), as are
    the network's ``backbone``/``masking``, which are parts of their own.
    """
    registries = {"net": MODELS, "backbone": BACKBONES, "masking": MASKINGS}
    skip = {"net": ("backbone", "masking", "weights"), "backbone": ("weights",), "masking": ()}[part]
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, str):
        entry = registries[part].get(value)
        if entry is None:
            raise ValueError(f"model.{part}: unknown name {value!r}")
        cls, kwargs = entry if isinstance(entry, tuple) else (entry, {})
    elif isinstance(value, dict) and "class_path" in value:
        cls, kwargs = _import(value["class_path"]), dict(value.get("init_args") or {})
    else:  # an object or builder given in Python: compared as it is
        return {"value": value}
    args = {}
    if inspect.isclass(cls) and cls.__init__ is not object.__init__:
        for name, param in list(inspect.signature(cls.__init__).parameters.items())[1:]:
            if param.default is not param.empty and param.kind not in (
                param.VAR_POSITIONAL,
                param.VAR_KEYWORD,
            ):
                args[name] = param.default
    args.update({k: v for k, v in kwargs.items() if k != "__path__"})
    skip = (*skip, *getattr(cls, "init_only_args", ()))  # e.g. BAM's base_learner: a checkpoint holds it
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items() if k not in skip}
    return {"class_path": class_path(cls) if inspect.isclass(cls) else str(cls), "init_args": args}


def given_part_paths(part: str, value: Any) -> set[str]:
    """What ``model.<part>`` given as ``value`` in a config or on the command line states, as dotted paths.

    A name states its class and the arguments its registry entry fixes (``dilated_resnet50``: the
    class and ``init_args.name``), not the defaults of the others; a ``{class_path, init_args}``
    mapping states the keys it writes (an argument written beside ``class_path`` is an ``init_args``
    key, as jsonargparse reads it).

    Example:
        >>> sorted(given_part_paths("net", {"class_path": "fss.models.BAM", "init_args": {"shots": 5}}))
        ['class_path', 'init_args.shots']
    """
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, str):
        entry = NAMED_PARTS[part][0].get(value)
        kwargs = entry[1] if isinstance(entry, tuple) else {}
        return {"class_path", *(f"init_args.{k}" for k in kwargs)}
    if not isinstance(value, dict):
        return {""}  # an object given in Python: all of it
    paths: set[str] = set()
    for key, sub in value.items():
        if key == "class_path":
            paths.add("class_path")
        elif key == "init_args" and isinstance(sub, dict):
            paths.update(leaf_paths("init_args", sub))
        elif key != "__path__":
            paths.update(leaf_paths(f"init_args.{key}", sub))
    return paths


def leaf_paths(prefix: str, value: Any) -> set[str]:
    """The dotted paths of the leaves of a nested mapping under ``prefix`` (``prefix`` itself for a leaf)."""
    if isinstance(value, dict) and value:
        return {path for key, sub in value.items() for path in leaf_paths(f"{prefix}.{key}", sub)}
    return {prefix}


# -- the options before the typed form --------------------------------------------------------------
#: model options of fss before the typed form, and what replaced them
LEGACY_KEYS = {
    "net_options": "model.net.init_args",
    "weights": "model.backbone.init_args.weights",
}


def _class_args(registry: dict[str, Any], part: str):
    def args(name: str) -> str:
        entry = registry[name]
        cls, kwargs = entry if isinstance(entry, tuple) else (entry, {})
        extra = "".join(f" --model.{part}.{k} {v}" for k, v in kwargs.items())
        return f"--model.{part} {cls.__name__}{extra}"

    return args


#: the parts that take a registered name: (registry, the class form of a name on the command line)
NAMED_PARTS = {
    "net": (MODELS, _class_args(MODELS, "net")),
    "backbone": (BACKBONES, _class_args(BACKBONES, "backbone")),
    "masking": (MASKINGS, _class_args(MASKINGS, "masking")),
}

#: command-line options of the old form: (old, new, the part that must be in the class form)
LEGACY_ARGS = (
    ("--model.net_options", "--model.net", "net"),
    ("--model.weights", "--model.backbone.weights", "backbone"),
)


def upgrade_model_options(old: dict[str, Any]) -> dict[str, Any]:
    """Model options of the old form (``net``/``backbone`` names, ``net_options``, ``weights``) -> the typed form.

    ``masking: fm`` with ``net: asnet`` meant the reference ASNet's attention-only masking, which is
    ``none`` now (``fm`` multiplies the features in every model).
    """
    new = {k: v for k, v in old.items() if k not in LEGACY_KEYS}
    net = old.get("net", "hsnet")
    options = dict(old.get("net_options") or {})
    if isinstance(net, str) and net in MODELS and options:
        new["net"] = {"class_path": class_path(MODELS[net]), "init_args": options}
    backbone = old.get("backbone", "resnet50")
    if "weights" in old and isinstance(backbone, str) and backbone in BACKBONES:
        cls, kwargs = BACKBONES[backbone]
        new["backbone"] = {"class_path": class_path(cls), "init_args": {**kwargs, "weights": old["weights"]}}
    if net == "asnet" and old.get("masking", "hm") == "fm":
        new["masking"] = "none"
    return new


def option_form_message(argv: list[str]) -> str | None:
    """One message naming the typed form when ``argv`` or its ``--config`` files use the old model options,
    or give options to a part given by its registered name on the command line."""
    found: list[str] = []
    named: dict[str, str] = {}  # part -> the registered name given last on the command line
    for i, arg in enumerate(argv):
        key = arg.split("=", 1)[0]
        part = key.removeprefix("--model.")
        if key.startswith("--model.") and part in NAMED_PARTS:
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            named.pop(part, None)
            if value in NAMED_PARTS[part][0]:
                named[part] = value
        elif key.startswith("--model.") and part.split(".")[0] in named and not part.endswith(".help"):
            owner = part.split(".")[0]
            found.append(
                f"--model.{owner} {named[owner]} is a registered name and takes no options ({key}): "
                f"give the class instead, {NAMED_PARTS[owner][1](named[owner])} {key} ... (docs/design.md)"
            )
        if key in ("--config", "-c") and (i + 1 < len(argv) or "=" in arg):
            path = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
            model = _model_section(path)
            legacy = sorted(set(model) & set(LEGACY_KEYS))
            if legacy:
                snippet = yaml.safe_dump({"model": _typed_parts(model)}, sort_keys=False).rstrip()
                found.append(
                    f"{path}: model.{' and model.'.join(legacy)} are options of fss before typed models. "
                    f"Write the model's parts as typed objects instead (docs/design.md):\n{snippet}"
                )
        for old, new, part in LEGACY_ARGS:
            if key == old or key.startswith(old + "."):
                found.append(
                    f"{key} is an option of fss before typed models: use {new}{key[len(old) :]} "
                    f"(with model.{part} in the class form, as in the shipped configs; docs/design.md)"
                )
    return "\n".join(found) or None


def _model_section(path: str) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):  # jsonargparse reports it
        return {}
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


def _typed_parts(model: dict[str, Any]) -> dict[str, Any]:
    new = upgrade_model_options(model)
    return {key: new[key] for key in ("net", "backbone", "masking") if key in new}
