"""``fss data check --config X.yaml``: verify a dataset root before a long run.

:func:`check_datamodule` builds the episode index of every fold and split of a data module, reports
per-fold class, image and episode counts, then decodes every image and mask file the episodes may
read and compares each mask's size with its image's (and, for folder datasets, that each mask has
object pixels), and raises :class:`DatasetCheckError` listing every problem with its file and the
count. With ``--fix-lists`` the broken files are left out of the episodes from then on instead
(recorded in the dataset's cache, ``excluded_files.txt``), so a run no longer stops on them.
:func:`main` is the command line (``fss data check``), registered in ``fss/cli.py``'s
``EXTRA_COMMANDS``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from fss.data.base import EpisodicDataModule, EpisodicDataset
from fss.data.common import ImageEpisodeDataset, exclude_files, image_size, read_label, verify_file
from fss.data.fss1000 import FSS1000Dataset
from fss.data.masks import MaskError, mask_foreground

log = logging.getLogger(__name__)


#: the fix the report proposes for broken files
FIX_LISTS_HINT = (
    "Replace the broken files, or leave them out of the episodes: the same command with --fix-lists"
)


class DatasetCheckError(RuntimeError):
    """The dataset cannot serve its episodes; the message holds the report and every problem found."""


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


def _item_problems(dataset: ImageEpisodeDataset, item: object, decoded: dict[Path, str | None]) -> list[str]:
    """Problems of one item: a missing or undecodable file, a mask whose size differs from its image,
    and (folder datasets, whose masks may follow any convention) a mask without object pixels."""
    files = dataset.item_files(item)
    problems = [decoded[f] for f in files if decoded.get(f)]
    if problems or len(files) < 2:
        return problems
    image, masks = files[0], files[1:]
    size = image_size(image)
    for mask in masks:
        mask_size = image_size(mask)
        if size is not None and mask_size is not None and mask_size != size:
            problems.append(
                f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is {size[0]}x{size[1]} "
                "(it would be resized to fit: export the mask at the image's size)"
            )
    if isinstance(dataset, FSS1000Dataset):
        for mask in masks:
            try:
                mask_foreground(read_label(mask, grey=True), False, mask)
            except (MaskError, OSError) as err:
                problems.append(str(err))
    return problems


def _decode_all(paths: list[Path], workers: int) -> dict[Path, str | None]:
    """``{path: None or the reason it cannot be decoded}``, decoding in ``workers`` threads."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(paths, pool.map(verify_file, paths)))


def check_datamodule(
    dm: EpisodicDataModule,
    verify_files: bool = True,
    max_files: int | None = None,
    fix_lists: bool = False,
    workers: int | None = None,
) -> str:
    """Check that ``dm`` can build every fold's episodes and read their files; return the report.

    Args:
        dm: a data module (PASCAL, COCO, FSS-1000 or any :class:`EpisodicDataModule`).
        verify_files: decode every image and mask the episodes may read, and compare each mask's size
            with its image's.
        max_files: stop verifying after this many files (``None``: all).
        fix_lists: leave the items with a broken file out of the dataset's episodes from now on (the
            files are added to ``<cache>/excluded_files.txt``, see :func:`fss.data.common.exclude_files`)
            instead of failing.
        workers: decoding threads (default: the CPU count, at most 8).

    Returns:
        The report: one line per fold and split with class, image and episode counts, the files
        verified, and with ``fix_lists`` the files left out.

    Raises:
        DatasetCheckError: the report (every fold, failed splits marked), the number of problems
            and one ``PROBLEM:`` line per problem (a wrong layout, a list error, a split without
            usable classes, a missing or undecodable file, a mask of the wrong size or without object).
    """
    lines = [f"{type(dm).__name__} (shot={dm.shot}): {dm.num_classes} classes"]
    datasets: list[EpisodicDataset] = []
    problems: list[str] = []

    def fail() -> DatasetCheckError:
        return DatasetCheckError(
            "\n".join(
                [*lines, f"{len(problems)} problem(s):", *(f"PROBLEM: {p}" for p in problems)]
                + ([FIX_LISTS_HINT] if any("file" in p or "mask" in p for p in problems) else [])
            )
        )

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
        raise fail()

    items: dict[tuple[int, object], ImageEpisodeDataset] = {}  # each (dataset root, item) once
    for dataset in datasets:
        if not isinstance(dataset, ImageEpisodeDataset):
            try:
                dataset.episode(0)
            except Exception as err:  # noqa: BLE001 - reported as a check problem
                problems.append(f"{type(dataset).__name__}: episode 0 failed: {err}")
            continue
        if verify_files:
            for item in dataset.items():
                items.setdefault((id(dataset.data_root), item), dataset)
    if problems:
        raise fail()
    if not verify_files:
        lines.append("OK")
        return "\n".join(lines)

    selected = list(items.items())
    files: list[Path] = list(dict.fromkeys(f for (_, item), ds in selected for f in ds.item_files(item)))
    limited = max_files is not None and len(files) > max_files
    if limited:
        files = files[:max_files]
        allowed = set(files)
        selected = [(key, ds) for key, ds in selected if all(f in allowed for f in ds.item_files(key[1]))]
    decoded = _decode_all(files, workers or min(8, os.cpu_count() or 1))
    broken: dict[Path, list[Path]] = {}  # dataset root -> files to leave out
    seen: set[str] = set()
    for (_, item), dataset in selected:
        for problem in _item_problems(dataset, item, decoded):
            if problem not in seen:
                seen.add(problem)
                problems.append(problem)
            bad = [f for f in dataset.item_files(item) if decoded.get(f)] or dataset.item_files(item)[1:2]
            broken.setdefault(dataset.data_root, []).extend(bad or dataset.item_files(item)[:1])
    limit = f" (stopped at --max-files {max_files})" if limited else ""
    lines.append(f"files: {len(files)} images and masks decoded{limit}")
    if problems and fix_lists:
        for root, bad in broken.items():
            listed = exclude_files(root, sorted(set(bad)))
            lines.append(
                f"left out {len(set(bad))} file(s) with a problem: listed in {listed}; the next run builds its "
                "episodes without them (delete that file to take them back)"
            )
        lines += [f"fixed: {p}" for p in problems]
        lines.append("OK (after leaving the broken files out)")
        return "\n".join(lines)
    if problems:
        raise fail()
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
    parser = ArgumentParser(prog="fss data check", exit_on_error=False, allow_abbrev=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    cfg = parser.parse_args(["--data", yaml.safe_dump(section), *overrides])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    dm = instantiate(cfg).data
    if not isinstance(dm, EpisodicDataModule):
        raise TypeError(f"{path}: data is a {type(dm).__name__}, not an fss EpisodicDataModule")
    return dm


def main(argv: Sequence[str] | None = None) -> int:
    """``fss data check --config X.yaml [--data.root PATH ...] [--no-verify] [--max-files N] [--fix-lists]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="fss data",
        description="Dataset tools. check: build every fold's episode index of the config's data module, "
        "print class/image counts, decode every image and mask and compare their sizes; report every "
        "problem with its file.",
        allow_abbrev=False,
    )
    parser.add_argument("command", choices=["check"])
    parser.add_argument("--config", required=True, help="a fss YAML config with a data section")
    parser.add_argument("--no-verify", action="store_true", help="only build the indexes, do not open files")
    parser.add_argument("--max-files", type=int, default=None, help="verify at most this many files")
    parser.add_argument(
        "--fix-lists",
        action="store_true",
        help="leave the items with a broken file out of the episodes from now on (instead of failing)",
    )
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPUs, max 8)")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dm = load_datamodule(args.config, overrides)
        report = check_datamodule(
            dm,
            verify_files=not args.no_verify,
            max_files=args.max_files,
            fix_lists=args.fix_lists,
            workers=args.workers,
        )
    except DatasetCheckError as err:
        print(err, file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, argparse.ArgumentError) as err:
        print(f"fss data check: {err}", file=sys.stderr)
        return 1
    print(report)
    return 0
