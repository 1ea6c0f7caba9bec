"""End-to-end check: the reference evaluation and ``fss test`` on the same data and weights.

The reference code is *not* part of this repository. Clone it yourself and point this script at
the clone and at your data (the folder that holds ``VOC2012/``, ``COCO2014/`` or ``FSS-1000/``, the
reference's ``--datapath``)::

    git clone https://github.com/juhongm999/hsnet /tmp/hsnet
    python benchmarks/reference_eval.py --reference /tmp/hsnet --benchmark pascal --root /datasets \\
        --fold 0 --shot 1 --backbone resnet50 --ckpt pascal_fold0_resnet50.pt
    # HSNet-HM: add --hm /tmp/hm (a clone of moonsh/HM-Hybrid-Masking-ECCV-2022) and --masking hm

It runs, in this process:

1. the reference's test loop as its ``test.py`` does it: its own ``FSSDataset`` loader (batch 1,
   no workers, ``utils.fix_randseed(0)``), its network with the checkpoint loaded into
   ``nn.DataParallel``, ``predict_mask_nshot``, ``Evaluator.classify_prediction`` and its
   ``AverageMeter`` (on a machine without CUDA its ``.cuda()`` calls are made no-ops; the
   predicted mask reaches the evaluator as float, since today's ``torch.histc`` rejects integers);
2. ``fss test`` with ``configs/<benchmark>_hsnet_<masking>.yaml`` on the same root, the same split
   lists (by default the clone's ``data/splits/<benchmark>``, or ``--split-dir``), the same
   checkpoint (``--model.pretrained``) and ``data.episode_order: hsnet``;

and prints both mIoU and FB-IoU to two decimals (as the reference logs them), exiting with status 1
unless they agree at that precision. ``--ckpt random`` makes a checkpoint in the reference format
from random weights (the backbone too; no download), with the last layer's foreground bias set so
that about half of the first query is predicted as foreground: a check of the whole pipeline
without a trained model, e.g. on the fixtures of ``tests/data/fixtures.py`` (``--make-fixture``).
``--episodes N`` scores only the first N episodes on both sides (the reference draws them in
order, so they are its first N episodes too); mIoU is then averaged over the classes those
episodes saw on the fss side and over all fold classes on the reference side, so pick N large
enough to see every class (PASCAL-5i cycles through the fold's list: N >= the list length).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))  # tests.data.fixtures for --make-fixture

from reference import random_torchvision  # noqa: E402

#: the reference's top-level packages (they import each other as ``model``, ``data``, ``common``)
REFERENCE_PACKAGES = ("model", "data", "common")
#: benchmark -> (the reference's split folder, fss's config prefix)
BENCHMARKS = {"pascal": ("pascal", "pascal"), "coco": ("coco", "coco"), "fss": ("fss", "fss1000")}


@contextlib.contextmanager
def reference_code(
    clone: Path, hm_clone: Path | None, split_dir: Path | None, benchmark: str
) -> Iterator[Path]:
    """A temporary copy of the clone, importable and the working directory (its loaders read
    ``data/splits/...`` relative to it); ``split_dir`` replaces ``data/splits/<benchmark>``, HM's
    ``hsnet.py`` becomes ``model/hsnet_hm.py``. Everything is undone on exit."""
    for sub in ("model/hsnet.py", "data/dataset.py", "common/evaluation.py", "common/logger.py"):
        if not (clone / sub).is_file():
            raise SystemExit(f"{clone / sub} not found: --reference must be a clone of juhongm999/hsnet")
    if hm_clone is not None and not (hm_clone / "hsnet.py").is_file():
        raise SystemExit(f"{hm_clone / 'hsnet.py'} not found: --hm must be a clone of the HM repository")
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="fss_reference_eval_") as tmp:
        work = Path(tmp) / "reference"
        shutil.copytree(clone, work, ignore=shutil.ignore_patterns(".git", "logs", "*.pt"))
        for package in REFERENCE_PACKAGES:
            (work / package / "__init__.py").touch()
        (work / "model" / "base" / "__init__.py").touch()
        if hm_clone is not None:
            shutil.copy(hm_clone / "hsnet.py", work / "model" / "hsnet_hm.py")
        if split_dir is not None:
            target = work / "data" / "splits" / BENCHMARKS[benchmark][0]
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(split_dir, target)
        sys.path.insert(0, str(work))
        os.chdir(work)
        stubbed = _stub_missing("tensorboardX", SummaryWriter=None)  # only its training logger uses it
        try:
            yield work
        finally:
            os.chdir(cwd)
            sys.path.remove(str(work))
            for name in [m for m in sys.modules if m.split(".")[0] in REFERENCE_PACKAGES + stubbed]:
                del sys.modules[name]


def _stub_missing(name: str, **attributes: Any) -> tuple[str, ...]:
    """Put an empty module ``name`` (with ``attributes``) in ``sys.modules`` if it cannot be imported;
    returns ``(name,)`` when it did, else ``()``."""
    try:
        importlib.import_module(name)
        return ()
    except ImportError:
        stub = ModuleType(name)
        stub.__dict__.update(attributes)
        sys.modules[name] = stub
        return (name,)


@contextlib.contextmanager
def cuda_calls_on_cpu(device: torch.device) -> Iterator[None]:
    """Without CUDA, ``tensor.cuda()`` (in the reference's meter and ``to_cuda``) returns the tensor."""
    if device.type == "cuda":
        yield
        return
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self):
        yield


def reference_network(masking: str, backbone: str, use_original_imgsize: bool) -> nn.Module:
    """The reference HSNet (``fm``) or HSNet-HM (``hm``), built with random backbone weights."""
    module = importlib.import_module("model.hsnet" if masking == "fm" else "model.hsnet_hm")
    with random_torchvision():
        return module.HypercorrSqueezeNetwork(backbone, use_original_imgsize)


def random_checkpoint(model: nn.Module, episode: dict[str, Any], path: Path, seed: int = 0) -> Path:
    """Save ``model``'s random weights as a reference checkpoint (``module.`` keys), with the last
    layer's foreground bias shifted so that about half of ``episode``'s query is foreground."""
    torch.manual_seed(seed)
    for m in model.modules():  # the learner is initialised by torch's defaults; make it seed-fixed
        if isinstance(m, (nn.Conv2d, nn.Linear)) and any(p.requires_grad for p in m.parameters()):
            m.reset_parameters()
    model.eval()
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 2][-1]
    with torch.no_grad():
        logits = model(
            episode["query_img"][None], episode["support_imgs"][None, 0], episode["support_masks"][None, 0]
        )
        last.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    torch.save(nn.DataParallel(model).state_dict(), path)
    return path


def run_reference(args: argparse.Namespace, device: torch.device, ckpt: Path) -> tuple[float, float, int]:
    """The reference test loop (``test.py``): ``(mIoU, FB-IoU, episodes)``."""
    FSSDataset = importlib.import_module("data.dataset").FSSDataset  # noqa: N806 - the reference's name
    Evaluator = importlib.import_module("common.evaluation").Evaluator  # noqa: N806
    AverageMeter = importlib.import_module("common.logger").AverageMeter  # noqa: N806
    utils = importlib.import_module("common.utils")

    model = reference_network(args.masking, args.backbone, args.use_original_imgsize)
    model = nn.DataParallel(model)
    model.load_state_dict(torch.load(ckpt, map_location="cpu"))
    model.to(device).eval()
    Evaluator.initialize()
    FSSDataset.initialize(
        img_size=args.img_size, datapath=str(args.root), use_original_imgsize=args.use_original_imgsize
    )
    loader = FSSDataset.build_dataloader(args.benchmark, 1, 0, args.fold, "test", args.shot)
    total = len(loader) if args.episodes is None else min(args.episodes, len(loader))
    with cuda_calls_on_cpu(device), torch.no_grad():
        utils.fix_randseed(0)
        meter = AverageMeter(loader.dataset)
        for idx, batch in enumerate(loader):
            if idx >= total:
                break
            batch = utils.to_cuda(batch) if device.type == "cuda" else batch
            pred_mask = model.module.predict_mask_nshot(batch, nshot=args.shot)
            # as float: today's torch.histc takes no integer tensors (the 0/1 values are exact either way)
            area_inter, area_union = Evaluator.classify_prediction(pred_mask.float(), batch)
            meter.update(area_inter, area_union, batch["class_id"], loss=None)
        miou, fb_iou = meter.compute_iou()
    return float(miou), float(fb_iou), total


def make_random_checkpoint(args: argparse.Namespace, path: Path) -> Path:
    """``--ckpt random``: the reference network with random weights, calibrated on its first episode."""
    FSSDataset = importlib.import_module("data.dataset").FSSDataset  # noqa: N806
    FSSDataset.initialize(img_size=args.img_size, datapath=str(args.root), use_original_imgsize=False)
    dataset = FSSDataset.build_dataloader(args.benchmark, 1, 0, args.fold, "test", args.shot).dataset
    importlib.import_module("common.utils").fix_randseed(0)  # the episode's supports: a fixed draw
    episode = dataset[0]  # (the test loop reseeds NumPy's global RNG itself)
    return random_checkpoint(reference_network(args.masking, args.backbone, False), episode, path)


def run_fss(args: argparse.Namespace, device: torch.device, ckpt: Path, split_dir: Path, out: Path) -> dict:
    """``fss test`` on the same data and checkpoint: ``{"test/miou": ..., "test/fbiou": ...}``."""
    from fss.cli import build_cli

    prefix = BENCHMARKS[args.benchmark][1]
    config = REPO / "configs" / f"{prefix}_hsnet_{args.masking}.yaml"
    options = {
        "data.init_args.root": str(args.root),
        "data.init_args.split_dir": str(split_dir),
        "data.init_args.shot": str(args.shot),
        "data.init_args.img_size": str(args.img_size),
        "data.init_args.episode_order": "hsnet",
        "data.init_args.eval_batch_size": "1",
        "data.init_args.num_workers": "0",
        "data.init_args.use_original_imgsize": str(args.use_original_imgsize).lower(),
        "model.backbone": args.backbone,
        "model.masking": args.masking,
        "model.weights": "null",
        "model.pretrained": str(ckpt),
        "trainer.accelerator": "gpu" if device.type == "cuda" else "cpu",
        "trainer.devices": "1",
        "trainer.logger": "false",
        "trainer.enable_progress_bar": "false",
        "trainer.default_root_dir": str(out),
    }
    if args.benchmark != "fss":
        options["data.init_args.fold"] = str(args.fold)
    if args.episodes is not None:
        options["data.init_args.test_episodes"] = str(args.episodes)
    argv = ["test", "--config", str(config)]
    for key, value in options.items():
        argv += [f"--{key}", value]
    with mock.patch.object(sys, "argv", ["fss"]):  # LightningCLI warns when sys.argv holds other arguments
        cli = build_cli(argv)
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k in ("test/miou", "test/fbiou")}


def make_fixture(root: Path, benchmark: str) -> Path:
    """A small dataset in the reference's layout under ``root`` and its split lists; returns the lists."""
    from tests.data.fixtures import make_pascal, pascal_image_classes

    if benchmark != "pascal":
        raise SystemExit("--make-fixture writes a PASCAL-5i fixture; use --benchmark pascal")
    make_pascal(root, n_train=4, n_val=40, size=(150, 180))
    split_dir = root / "splits"
    for sub, year, n in (("val", 2007, 40), ("trn", 2008, 4)):
        (split_dir / sub).mkdir(parents=True, exist_ok=True)
        for fold in range(4):
            lines = [
                f"{year}_00{k:04d}__{c + 1:02d}" for k in range(n) for c in sorted(pascal_image_classes(k))
            ]
            lines = [line for line in lines if (int(line[-2:]) - 1) // 5 == fold]
            (split_dir / sub / f"fold{fold}.txt").write_text("".join(f"{line}\n" for line in lines))
    return split_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="clone of juhongm999/hsnet")
    parser.add_argument("--hm", type=Path, default=None, help="clone of moonsh/HM-Hybrid-Masking-ECCV-2022")
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="pascal")
    parser.add_argument(
        "--root", type=Path, required=True, help="folder with VOC2012/, COCO2014/ or FSS-1000/"
    )
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--ckpt", required=True, help="reference checkpoint (.pt), or 'random'")
    parser.add_argument("--masking", choices=("fm", "hm"), default="fm", help="hm needs --hm")
    parser.add_argument("--backbone", choices=("resnet50", "resnet101"), default="resnet101")
    parser.add_argument("--img-size", type=int, default=400, help="400 in HSNet's test.py")
    parser.add_argument("--episodes", type=int, default=None, help="only the first N episodes")
    parser.add_argument(
        "--split-dir", type=Path, default=None, help="lists instead of the clone's data/splits"
    )
    parser.add_argument("--use-original-imgsize", action="store_true")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--make-fixture", action="store_true", help="first write a PASCAL fixture into --root"
    )
    args = parser.parse_args(argv)
    if args.masking == "hm" and args.hm is None:
        parser.error("--masking hm needs --hm (a clone of the HM repository)")
    if args.use_original_imgsize and args.benchmark == "fss":
        parser.error("HSNet's FSS-1000 loader has no original-size mode (it always scores at --img-size)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.reference, args.root = args.reference.resolve(), args.root.resolve()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.make_fixture:
        args.split_dir = make_fixture(args.root, args.benchmark)
    split_dir = (
        args.split_dir or args.reference / "data" / "splits" / BENCHMARKS[args.benchmark][0]
    ).resolve()
    with tempfile.TemporaryDirectory(prefix="fss_reference_eval_runs_") as tmp:
        ckpt = Path(args.ckpt).resolve() if args.ckpt != "random" else Path(tmp) / "random_reference.pt"
        with reference_code(args.reference, args.hm and args.hm.resolve(), args.split_dir, args.benchmark):
            if args.ckpt == "random":
                make_random_checkpoint(args, ckpt)
            ref_miou, ref_fbiou, episodes = run_reference(args, device, ckpt)
        ours = run_fss(args, device, ckpt, split_dir, Path(tmp) / "fss")
    rows = [
        (f"reference ({args.reference.name} test loop)", ref_miou, ref_fbiou),
        ("fss test (episode_order: hsnet)", ours["test/miou"], ours["test/fbiou"]),
    ]
    print(
        f"\n{args.benchmark} fold {args.fold}, {args.shot}-shot, {args.backbone}, {args.masking}, "
        f"{episodes} episodes, img_size {args.img_size}, checkpoint {args.ckpt}"
    )
    print(f"{'':<40}{'mIoU':>8}{'FB-IoU':>9}")
    for name, miou, fbiou in rows:
        print(f"{name:<40}{miou:>8.2f}{fbiou:>9.2f}")
    diff = [abs(a - b) for a, b in zip(rows[0][1:], rows[1][1:])]
    print(f"{'absolute difference':<40}{diff[0]:>8.1e}{diff[1]:>9.1e}")
    agree = all(f"{a:.2f}" == f"{b:.2f}" for a, b in zip(rows[0][1:], rows[1][1:]))
    finite = all(math.isfinite(v) for row in rows for v in row[1:])
    print("agree to the printed precision: " + ("yes" if agree and finite else "NO"))
    return 0 if agree and finite else 1


if __name__ == "__main__":
    sys.exit(main())
