"""Episode loading speed of the benchmark data modules, with 0, 1 and 2 dataloader workers.

Builds the tiny fixture datasets of ``tests/data/fixtures.py`` (real JPEG/PNG files, a COCO JSON) in a
temporary folder, then times the test dataloader of each module (PASCAL-5i, COCO-20i from PNG and
from JSON masks, FSS-1000) and prints episodes per second. Loading is dominated by decoding, resizing
to ``img_size`` and normalising; the fixture images are small by default (``--image-size``; real
PASCAL/COCO images are ~500 x 375 px), so real datasets load more slowly per episode.

    python benchmarks/data_speed.py [--episodes 96] [--img-size 400] [--shot 1] [--workers 0 1 2]
    git worktree add /tmp/base <commit>                             # before / after a change:
    python benchmarks/data_speed.py --baseline /tmp/base --repeats 5  # both versions, alternating

With ``--baseline CHECKOUT`` the other checkout's ``fss`` is imported next to this one and each
measurement alternates the two (baseline, ours, baseline, ours, ...) ``--repeats`` times; the table
gives the median episodes/s of each and the ratio ours / baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.data.fixtures
sys.path.insert(0, str(REPO / "benchmarks"))  # for speed.baseline_package

import torch  # noqa: E402
from speed import baseline_package  # noqa: E402

import fss  # noqa: E402
from tests.data.fixtures import make_coco, make_fss1000, make_pascal  # noqa: E402


def episodes_per_second(dm) -> float:
    """Iterate the test dataloader once (after building it and the first batch) and return episodes/s."""
    dm.setup("test")
    loader = dm.test_dataloader()
    it = iter(loader)
    first = next(it)  # worker start-up and the first batch are not timed
    n_first = len(first["query_name"])
    start = time.perf_counter()
    n = sum(len(batch["query_name"]) for batch in it)
    elapsed = time.perf_counter() - start
    del it
    return (n / elapsed) if n else float(n_first)


def module_builders(
    package: ModuleType, roots: dict[str, Path], args: argparse.Namespace
) -> dict[str, Callable[[int], object]]:
    """``name -> (workers -> data module)`` for the fixture datasets, from ``package`` (``fss`` or a baseline)."""
    data = importlib.import_module(f"{package.__name__}.data")
    common = {
        "shot": args.shot,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "test_episodes": args.episodes,
    }
    return {
        "PASCAL-5i": lambda w: data.PascalDataModule(root=str(roots["pascal"]), num_workers=w, **common),
        "COCO-20i (png)": lambda w: data.COCO20iDataModule(
            root=str(roots["coco"]), mask_source="png", num_workers=w, **common
        ),
        "COCO-20i (json)": lambda w: data.COCO20iDataModule(
            root=str(roots["coco"]), mask_source="json", num_workers=w, **common
        ),
        "FSS-1000": lambda w: data.FSS1000DataModule(root=str(roots["fss1000"]), num_workers=w, **common),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=96, help="test episodes per measurement")
    parser.add_argument("--img-size", type=int, default=400, help="model input side (data.img_size)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the fixture images on disk")
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline", type=Path, default=None, help="another fss checkout, timed alternately")
    parser.add_argument("--repeats", type=int, default=3, help="alternations per measurement (--baseline)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="fss_data_speed_") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        size = (args.image_size, args.image_size + 16)
        roots = {
            "pascal": make_pascal(base / "pascal", n_train=40, n_val=40, size=size),
            "coco": make_coco(base / "coco", n_train=20, n_val=40, size=size),
            "fss1000": make_fss1000(base / "fss1000", n_classes=12, n_images=10, size=args.image_size),
        }
        ours = module_builders(fss, roots, args)
        baseline = None
        if args.baseline is not None:
            baseline = module_builders(stack.enter_context(baseline_package(args.baseline)), roots, args)
        print(
            f"episodes/s ({args.episodes} test episodes, shot {args.shot}, img_size {args.img_size}, "
            f"fixture images {size[0]}x{size[1]}, torch threads in the main process {torch.get_num_threads()})"
        )
        if baseline is None:
            print(f"{'module':<18}" + "".join(f"{f'{w} workers':>14}" for w in args.workers))
        else:
            print(f"{'module':<18}{'workers':>8}{'baseline':>10}{'ours':>10}{'ours/base':>11}")
        for name, build in ours.items():
            results[name] = {}
            for w in args.workers:
                if baseline is None:
                    results[name][w] = {"ours": episodes_per_second(build(w))}
                    continue
                rates: dict[str, list[float]] = {"baseline": [], "ours": []}
                for _ in range(args.repeats):
                    rates["baseline"].append(episodes_per_second(baseline[name](w)))
                    rates["ours"].append(episodes_per_second(build(w)))
                med = {k: statistics.median(v) for k, v in rates.items()}
                results[name][w] = med
                ratio = med["ours"] / med["baseline"]
                print(
                    f"{name:<18}{w:>8}{med['baseline']:>10.1f}{med['ours']:>10.1f}{ratio:>10.2f}x", flush=True
                )
            if baseline is None:
                print(f"{name:<18}" + "".join(f"{results[name][w]['ours']:>14.1f}" for w in args.workers))
    return results


if __name__ == "__main__":
    main()
