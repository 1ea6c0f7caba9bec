"""The shared episode options: declared once in EpisodicDataModule, typed and documented in every module."""

from __future__ import annotations

import inspect
import typing

import pytest
from jsonargparse import ArgumentParser

import fss.data
from fss.data.base import EpisodicDataModule

#: every episodic data module that configs can name (``class_path: fss.data.<name>``)
DATA_MODULES = [
    getattr(fss.data, name)
    for name in fss.data.__all__
    if inspect.isclass(getattr(fss.data, name))
    and issubclass(getattr(fss.data, name), EpisodicDataModule)
    and getattr(fss.data, name) is not EpisodicDataModule
]
SHARED = [name for name in inspect.signature(EpisodicDataModule).parameters]
HINTS = typing.get_type_hints(EpisodicDataModule.__init__)
#: options a module declares again on purpose, to give them another default
OVERRIDES = {"SyntheticDataModule": {"img_size"}}


def test_the_registry_of_data_modules_is_not_empty() -> None:
    assert {cls.__name__ for cls in DATA_MODULES} >= {
        "PascalDataModule",
        "COCO20iDataModule",
        "FSS1000DataModule",
        "SyntheticDataModule",
    }


@pytest.mark.parametrize("cls", DATA_MODULES, ids=lambda c: c.__name__)
def test_shared_options_are_declared_once_and_documented_in_every_module(cls: type) -> None:
    own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    redeclared = own & set(SHARED)
    assert redeclared == OVERRIDES.get(cls.__name__, set()), (
        f"{cls.__name__} declares shared options again: {sorted(redeclared)}; take **kwargs instead"
    )
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    actions = {action.dest: action for action in parser._actions}
    for name in SHARED:
        action = actions.get(f"data.{name}")
        assert action is not None, f"--data.{name} missing from {cls.__name__}'s options"
        assert action.help, f"--data.{name} of {cls.__name__} has no help text"
        assert action._typehint == HINTS[name], (name, action._typehint, HINTS[name])


def test_a_module_default_override_shows_in_its_options() -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(fss.data.SyntheticDataModule, "data")
    assert parser.get_defaults().data.img_size == 128
    parser = ArgumentParser()
    parser.add_class_arguments(fss.data.PascalDataModule, "data")
    assert parser.get_defaults().data.img_size == 400


def test_null_episode_counts_are_the_dataset_defaults() -> None:
    dm = fss.data.SyntheticDataModule(img_size=32)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 2000
    assert len(dm.datasets["val"]) == 1000
