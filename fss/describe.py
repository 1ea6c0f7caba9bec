"""Objects that can say how they were built: ``{class_path, init_args}``, the form of a config.

Backbones, masking strategies and models inherit :class:`RecordsInitArgs`, so the task can write
what it built into a checkpoint's hyper-parameters in the same form as a config, whether the
objects came from the CLI (jsonargparse) or from Python code; ``fss test --ckpt_path`` and
``load_from_checkpoint`` rebuild them from it.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any


class RecordsInitArgs:
    """Records the arguments of the constructor call (defaults included) in ``init_args``."""

    init_args: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        if cls.__init__ is object.__init__:  # no constructor arguments
            obj.__dict__["init_args"] = {}
            return obj
        try:
            bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        except TypeError:  # copy/pickle create the object without arguments, then restore its state
            obj.__dict__["init_args"] = {}
            return obj
        bound.apply_defaults()
        params = list(bound.signature.parameters.values())[1:]  # without self
        obj.__dict__["init_args"] = {
            p.name: bound.arguments[p.name] for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        return obj


def class_path(cls: type) -> str:
    """The shortest import path of ``cls`` (``fss.models.VAT``, re-exported, rather than ``fss.models.vat.VAT``)."""
    parts = cls.__module__.split(".")
    for i in range(1, len(parts)):
        module = sys.modules.get(".".join(parts[:i]))
        if getattr(module, cls.__qualname__, None) is cls:
            return f"{module.__name__}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{class_path, init_args}`` of an object built with recorded arguments (minus ``skip``)."""
    args = getattr(obj, "init_args", None) or {}
    return {
        "class_path": class_path(type(obj)),
        "init_args": {k: v for k, v in args.items() if k not in skip},
    }
