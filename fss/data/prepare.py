"""``fss data prepare deepglobe|isic --src DOWNLOAD --dst ROOT``: build a target's folders from its download.

The preparation functions live with their datasets (:func:`fss.data.deepglobe.prepare_deepglobe`,
:func:`fss.data.isic.prepare_isic`); this module holds what they share:

* every output file is written to a temporary name and renamed, so an interrupted run never leaves
  a half-written file under its final name;
* a unit of work (one Deepglobe tile, one ISIC image) is marked done in ``<dst>/.fss_prepare/`` only
  after all its files are written, and a second run skips the units marked done (resumable);
* the source is only read: its files are opened read-only and ``dst`` may not be the source folder
  or lie inside it;
* a tqdm progress bar shows the units.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: folder under ``dst`` where finished units are recorded
STATE_DIR = ".fss_prepare"


class PrepareError(ValueError):
    """The download is not where or what the preparation expects; the message says what to pass."""


def check_paths(src: Path, dst: Path) -> None:
    """Raise :class:`PrepareError` unless ``src`` exists and ``dst`` is neither ``src`` nor inside it."""
    if not src.is_dir():
        raise PrepareError(f"--src {src} is not a directory")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise PrepareError(f"--dst {dst} lies in --src {src}: write the prepared data elsewhere")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder (rename at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy the bytes of ``src`` to ``dst`` (the source is opened read-only; ``dst`` renamed into place)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    with src.open("rb") as fin, tmp.open("wb") as fout:
        shutil.copyfileobj(fin, fout)
    tmp.replace(dst)


def save_image(image: Any, path: Path, **save_kwargs: Any) -> None:
    """Encode a PIL image (format from ``path``'s suffix) and write it atomically."""
    buffer = io.BytesIO()
    image.save(
        buffer, format={".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG"), **save_kwargs
    )
    write_atomic(path, buffer.getvalue())


class Progress:
    """Resumable units of work: which are done (marker files), and a progress bar over the rest."""

    def __init__(self, dst: Path, task: str) -> None:
        self.state = dst / STATE_DIR / task
        self.state.mkdir(parents=True, exist_ok=True)

    def done(self, unit: str) -> bool:
        return (self.state / unit).is_file()

    def mark(self, unit: str) -> None:
        (self.state / unit).touch()

    def run(self, units: Sequence[T], name: Callable[[T], str], work: Callable[[T], None], desc: str) -> int:
        """Call ``work(unit)`` for every unit not yet done, marking each afterwards; return how many ran."""
        from tqdm import tqdm

        todo = [u for u in units if not self.done(name(u))]
        skipped = len(units) - len(todo)
        if skipped:
            print(f"{desc}: {skipped} of {len(units)} already done (resuming)", flush=True)
        for unit in tqdm(todo, desc=desc, unit="file", disable=not todo):
            work(unit)
            self.mark(name(unit))
        return len(todo)


def iter_files(folder: Path, suffixes: Iterable[str]) -> Iterator[Path]:
    """Files of ``folder`` (not recursive) with one of ``suffixes`` (lower case), sorted by name."""
    wanted = tuple(suffixes)
    yield from sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)


# ------------------------------------------------------------------------------------------ command line
def main(argv: Sequence[str] | None = None) -> int:
    """``fss data prepare deepglobe|isic --src DOWNLOAD --dst ROOT [options]``."""
    from fss.data.deepglobe import prepare_deepglobe
    from fss.data.isic import ISIC_CLASS_ORDER, prepare_isic

    parser = argparse.ArgumentParser(
        prog="fss data prepare",
        description="Build a cross-domain target's folders (PATNet's layout) from its official download. "
        "Resumable (run it again after an interruption), never writes into --src. See docs/datasets.md.",
    )
    parser.add_argument("dataset", choices=["deepglobe", "isic"])
    parser.add_argument("--src", required=True, help="the unpacked download")
    parser.add_argument("--dst", required=True, help="the data root (gets Deepglobe/ or ISIC/)")
    parser.add_argument(
        "--grid", type=int, default=6, help="deepglobe: cut each tile into grid x grid patches"
    )
    parser.add_argument(
        "--min-fraction",
        type=float,
        default=0.048,
        help="deepglobe: keep a patch only if its rarest colour covers more than this fraction",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="isic: CSV of image classes (ID,Class with nevus / melanoma / seborrheic_keratosis, or "
        "the ISIC 2017 part-3 ground truth image_id,melanoma,seborrheic_keratosis); default: the "
        "first *.csv in --src",
    )
    parser.add_argument(
        "--class-order",
        default=",".join(ISIC_CLASS_ORDER),
        help="isic: the classes of folders 1, 2, 3 (default %(default)s)",
    )
    args = parser.parse_args(list(sys.argv[2:] if argv is None else argv))
    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    try:
        if args.dataset == "deepglobe":
            counts = prepare_deepglobe(src, dst, grid=args.grid, min_fraction=args.min_fraction)
        else:
            classes = Path(args.classes).expanduser() if args.classes else None
            counts = prepare_isic(src, dst, classes=classes, class_order=args.class_order.split(","))
    except (PrepareError, OSError) as err:
        print(f"fss data prepare {args.dataset}: {err}", file=sys.stderr)
        return 1
    print(f"{args.dataset} prepared under {dst}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def data_main(argv: Sequence[str] | None = None) -> int:
    """``fss data check|prepare ...``: dispatch to :func:`fss.data.check.main` or :func:`main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prepare":
        return main(argv[1:])
    from fss.data.check import main as check_main

    return check_main(argv)


__all__ = ["PrepareError", "Progress", "check_paths", "copy_atomic", "data_main", "main", "save_image"]
