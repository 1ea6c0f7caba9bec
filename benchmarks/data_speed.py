"""Episode loading speed of the benchmark data modules, with 0, 1 and 2 dataloader workers.

Builds the tiny fixture datasets of ``tests/data/fixtures.py`` (real JPEG/PNG files, a COCO JSON) in a
temporary folder, then times the test dataloader of each module (PASCAL-5i, COCO-20i from PNG and
from JSON masks, FSS-1000) and prints episodes per second. Loading is dominated by decoding, resizing
to ``img_size`` and normalising; the fixture images are small (``--image-size``), so real datasets
(~500 px images) load more slowly per episode.

    python benchmarks/data_speed.py [--episodes 96] [--img-size 400] [--shot 1] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.data.fixtures

import torch  # noqa: E402

from fss.data.base import EpisodicDataModule  # noqa: E402
from fss.data.coco import COCO20iDataModule  # noqa: E402
from fss.data.fss1000 import FSS1000DataModule  # noqa: E402
from fss.data.pascal import PascalDataModule  # noqa: E402
from tests.data.fixtures import make_coco, make_fss1000, make_pascal  # noqa: E402


def episodes_per_second(dm: EpisodicDataModule) -> float:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=96, help="test episodes per measurement")
    parser.add_argument("--img-size", type=int, default=400, help="model input side (data.img_size)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the fixture images on disk")
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="fss_data_speed_") as tmp:
        base = Path(tmp)
        size = (args.image_size, args.image_size + 16)
        pascal = make_pascal(base / "pascal", n_train=40, n_val=40, size=size)
        coco = make_coco(base / "coco", n_train=20, n_val=40, size=size)
        fss = make_fss1000(base / "fss1000", n_classes=12, n_images=10, size=args.image_size)
        common = {
            "shot": args.shot,
            "img_size": args.img_size,
            "batch_size": args.batch_size,
            "test_episodes": args.episodes,
        }
        modules = {
            "PASCAL-5i": lambda w: PascalDataModule(root=str(pascal), num_workers=w, **common),
            "COCO-20i (png)": lambda w: COCO20iDataModule(
                root=str(coco), mask_source="png", num_workers=w, **common
            ),
            "COCO-20i (json)": lambda w: COCO20iDataModule(
                root=str(coco), mask_source="json", num_workers=w, **common
            ),
            "FSS-1000": lambda w: FSS1000DataModule(root=str(fss), num_workers=w, **common),
        }
        header = f"{'module':<18}" + "".join(f"{f'{w} workers':>14}" for w in args.workers)
        print(
            f"episodes/s ({args.episodes} test episodes, shot {args.shot}, img_size {args.img_size}, "
            f"fixture images {size[0]}x{size[1]}, torch threads in the main process {torch.get_num_threads()})"
        )
        print(header)
        for name, build in modules.items():
            rates = [episodes_per_second(build(w)) for w in args.workers]
            print(f"{name:<18}" + "".join(f"{r:>14.1f}" for r in rates))


if __name__ == "__main__":
    main()
