"""``fss data check --config X.yaml``: verify a dataset root before a long run.

:func:`check_datamodule` builds the episode index of every fold and split of a data module, reports
per-fold class, image and episode counts, then opens every image and mask file the episodes may read
(header check) and raises :class:`DatasetCheckError` naming the first missing or unreadable one.
:func:`main` is the command line (``fss data check``), registered in ``fss/cli.py``'s
``EXTRA_COMMANDS``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from fss.data.base import EpisodicDataModule, EpisodicDataset
from fss.data.common import ImageEpisodeDataset, verify_file

log = logging.getLogger(__name__)


class DatasetCheckError(RuntimeError):
    """The dataset cannot serve its episodes; the message holds the report and the first problem."""


def _splits_to_check(dm: EpisodicDataModule) -> list[tuple[int, tuple[str, ...]]]:
    """(fold, splits) to build: train+test per fold, or train/val/test without folds."""
    num_folds = dm.dataset_class.num_folds
    if getattr(dm, "class_split", None) == "coco2pascal" or getattr(dm, "test_only", False):
        return [(fold, ("test",)) for fold in range(num_folds)]
    splits = ("train", "val", "test") if num_folds == 1 else ("train", "test")
    return [(fold, splits) for fold in range(num_folds)]


def _build(dm: EpisodicDataModule, fold: int, split: str) -> EpisodicDataset:
    clone = copy.copy(dm)
    clone.fold = fold
    clone.datasets = {}
    return clone.build_dataset(split)


def _describe(dataset: EpisodicDataset) -> str:
    if isinstance(dataset, ImageEpisodeDataset):
        skipped = len(dataset.class_ids) - len(dataset.usable_class_ids)
        extra = f" ({skipped} skipped: fewer than shot+1 images)" if skipped else ""
        return (
            f"{len(dataset.usable_class_ids)} classes{extra}, {len(dataset.items())} images, "
            f"{len(dataset)} episodes"
        )
    return f"{len(dataset.class_ids)} classes, {len(dataset)} episodes"


def check_datamodule(dm: EpisodicDataModule, verify_files: bool = True, max_files: int | None = None) -> str:
    """Check that ``dm`` can build every fold's episodes and read their files; return the report.

    Args:
        dm: a data module (PASCAL, COCO, FSS-1000 or any :class:`EpisodicDataModule`).
        verify_files: open every image and mask the episodes may read (header check).
        max_files: stop verifying after this many files (``None``: all).

    Returns:
        The report: one line per fold and split with class, image and episode counts.

    Raises:
        DatasetCheckError: the report (every fold, failed splits marked) plus the first problem: a
            wrong layout, a list error, a split without usable classes, or else the first missing
            or unreadable file.
    """
    lines = [f"{type(dm).__name__} (shot={dm.shot}): {dm.num_classes} classes"]
    datasets: list[EpisodicDataset] = []
    problems: list[str] = []

    def fail(problem: str) -> DatasetCheckError:
        return DatasetCheckError("\n".join([*lines, f"PROBLEM: {problem}"]))

    for fold, splits in _splits_to_check(dm):
        parts = []
        for split in splits:
            try:
                dataset = _build(dm, fold, split)
            except (OSError, ValueError) as err:
                problems.append(f"fold {fold} {split}: {err}")
                parts.append(f"{split}: FAILED (see below)")
                continue
            datasets.append(dataset)
            parts.append(f"{split}: {_describe(dataset)}")
        lines.append(f"fold {fold}: " + "; ".join(parts))
    if problems:
        raise fail(problems[0])

    seen: set[Path] = set()
    checked = 0
    for dataset in datasets:
        if not isinstance(dataset, ImageEpisodeDataset):
            try:
                dataset.episode(0)
            except Exception as err:  # noqa: BLE001 - reported, then re-raised as a check error
                raise fail(f"{type(dataset).__name__}: episode 0 failed: {err}") from err
            continue
        if not verify_files:
            continue
        for path in dataset.files():
            if path in seen:
                continue
            if max_files is not None and checked >= max_files:
                break
            seen.add(path)
            problem = verify_file(path)
            if problem is not None:
                raise fail(problem)
            checked += 1
    if verify_files:
        limit = (
            f" (stopped at data.max_files={max_files})"
            if max_files is not None and checked >= max_files
            else ""
        )
        lines.append(f"files: {checked} images and masks readable{limit}")
    lines.append("OK")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ command line
def load_datamodule(config: str | Path, overrides: Sequence[str] = ()) -> EpisodicDataModule:
    """Instantiate the ``data`` section of a fss YAML config (other sections are ignored).

    Args:
        config: path of the YAML config (``data: {class_path: ..., init_args: {...}}``).
        overrides: ``--data.<option> value`` pairs, e.g. ``["--data.root", "/datasets/VOC"]``.
    """
    from jsonargparse import ArgumentParser
    from pytorch_lightning import LightningDataModule

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    section = (yaml.safe_load(path.read_text()) or {}).get("data")
    if section is None:
        raise ValueError(f"{path} has no 'data' section")
    parser = ArgumentParser(prog="fss data check", exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    cfg = parser.parse_args(["--data", yaml.safe_dump(section), *overrides])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    dm = instantiate(cfg).data
    if not isinstance(dm, EpisodicDataModule):
        raise TypeError(f"{path}: data is a {type(dm).__name__}, not an fss EpisodicDataModule")
    return dm


def main(argv: Sequence[str] | None = None) -> int:
    """``fss data check --config X.yaml [--data.root PATH ...] [--no-verify] [--max-files N]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="fss data",
        description="Dataset tools. check: build every fold's episode index of the config's data module, "
        "print class/image counts and verify that every image and mask can be read.",
    )
    parser.add_argument("command", choices=["check"])
    parser.add_argument("--config", required=True, help="a fss YAML config with a data section")
    parser.add_argument("--no-verify", action="store_true", help="only build the indexes, do not open files")
    parser.add_argument("--max-files", type=int, default=None, help="verify at most this many files")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dm = load_datamodule(args.config, overrides)
        report = check_datamodule(dm, verify_files=not args.no_verify, max_files=args.max_files)
    except DatasetCheckError as err:
        print(err, file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, argparse.ArgumentError) as err:
        print(f"fss data check: {err}", file=sys.stderr)
        return 1
    print(report)
    return 0
