"""Ours against the public HSNet / HSNet-HM code, alternating in one process (CPU or GPU).

The reference code is *not* part of this repository. Clone it yourself and point this script at
the clones::

    git clone https://github.com/juhongm999/hsnet /tmp/hsnet
    git clone https://github.com/moonsh/HM-Hybrid-Masking-ECCV-2022 /tmp/hm
    OMP_NUM_THREADS=1 python benchmarks/reference.py --hsnet /tmp/hsnet --hm /tmp/hm \\
        --threads 1 --clock process --shots 1 5 --repeats 5 --train --out reference.json

At run time it assembles, in a temporary directory, the package the HM authors' ``hsnet.py``
expects (HSNet's ``model/`` with HM's ``hsnet.py`` next to it as ``hsnet_hm``), imports both
networks from there, and makes their ``torchvision`` constructors ignore ``pretrained=True``
(random weights, no download; the speed does not depend on the values). Then it times, with
:func:`speed.time_interleaved` (ours and the reference alternating inside every repeat):

* inference as the reference ``test.py`` runs it: ``predict_mask_nshot`` under ``torch.no_grad()``,
  against our ``predict_mask`` (inference mode, the same vote rule);
* with ``--train``, a training step as the reference ``train.py`` does it (Adam, lr 1e-3, over
  ``model.parameters()``; batch ``--train-batch``, 1-shot) against ours (Adam on the learner);
* with ``--memory``, the peak memory of each (see ``speed.peak_memory``).

Both sides get the same random episode (400 x 400 px by default, ResNet-50, batch 1). The ratio
reference / ours is printed per measure and masking; ``--out`` writes every time as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from torchvision.models import resnet, vgg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import (  # noqa: E402
    build,
    inference_fn,
    make_episode,
    peak_memory,
    pick_device,
    temporary_package,
    time_interleaved,
    train_step_fn,
    write_results,
)

PACKAGE = "fss_reference_hsnet"


def _random_init(constructor: Callable) -> Callable:
    """A torchvision constructor that ignores ``pretrained``/``weights``: random init, no download."""

    def build_random(*args, pretrained: bool = False, weights=None, **kwargs):
        return constructor(weights=None, **kwargs)

    return build_random


@contextlib.contextmanager
def random_torchvision() -> Iterator[None]:
    """While active, the reference's ``resnet.resnet50(pretrained=True)`` (and co.) build random nets."""
    with contextlib.ExitStack() as stack:
        for module, name in ((resnet, "resnet50"), (resnet, "resnet101"), (vgg, "vgg16")):
            stack.enter_context(mock.patch.object(module, name, _random_init(getattr(module, name))))
        yield


@contextlib.contextmanager
def reference_networks(
    hsnet_dir: Path, hm_dir: Path
) -> Iterator[dict[str, Callable[[str], torch.nn.Module]]]:
    """Constructors ``backbone -> network`` of the reference HSNet ("fm") and HSNet-HM ("hm").

    Assembles HSNet's ``model/`` package with HM's ``hsnet.py`` in a temporary directory, imports
    both from there, and removes the package from ``sys.path``/``sys.modules`` on exit.
    """
    model_dir, hm_file = Path(hsnet_dir) / "model", Path(hm_dir) / "hsnet.py"
    for path, what in ((model_dir / "hsnet.py", "--hsnet"), (hm_file, "--hm")):
        if not path.is_file():
            raise SystemExit(f"{path} not found: {what} must point to a clone of the reference repository")
    with temporary_package(PACKAGE) as package:
        shutil.copytree(model_dir, package)
        shutil.copy(hm_file, package / "hsnet_hm.py")
        for init in (package / "__init__.py", package / "base" / "__init__.py"):
            init.touch()
        classes = {
            "fm": importlib.import_module(f"{PACKAGE}.hsnet").HypercorrSqueezeNetwork,
            "hm": importlib.import_module(f"{PACKAGE}.hsnet_hm").HypercorrSqueezeNetwork,
        }

        def constructor(cls: type) -> Callable[[str], torch.nn.Module]:
            def construct(backbone: str) -> torch.nn.Module:
                with random_torchvision():
                    return cls(backbone, False)

            return construct

        yield {m: constructor(cls) for m, cls in classes.items()}


def reference_inference(model: torch.nn.Module, episode: tuple, shots: int) -> Callable[[], torch.Tensor]:
    """The reference ``test.py`` step: ``predict_mask_nshot`` under ``torch.no_grad()``."""
    query, supports, masks, _ = episode
    batch = {"query_img": query, "support_imgs": supports, "support_masks": masks}

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model.predict_mask_nshot(batch, nshot=shots)

    return run


def reference_train_step(model: torch.nn.Module, episode: tuple) -> Callable[[], torch.Tensor]:
    """The reference ``train.py`` step: forward, ``compute_objective``, backward, Adam (lr 1e-3)."""
    query, supports, masks, target = episode
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-3}])

    def run() -> torch.Tensor:
        model.train_mode()
        loss = model.compute_objective(model(query, supports[:, 0], masks[:, 0]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return run


def compare(
    args: argparse.Namespace, reference: dict[str, Callable[[str], torch.nn.Module]]
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, int]]]:
    """Time ours and the reference, alternating: ``{measure: {"ours_hm"|"ref_hm"|...: [seconds]}}``,
    and with ``--memory`` their peak memory in bytes (``speed.peak_memory``, one more run each)."""
    device = pick_device(args.device)
    ours = {m: build("hsnet", m, args.backbone, device, None) for m in args.maskings}
    refs = {}
    for m in args.maskings:
        torch.manual_seed(0)
        refs[m] = reference[m](args.backbone).to(device).eval()
    results, memory = {}, {}
    measures: dict[str, tuple] = {
        f"infer_{k}shot": (make_episode(1, k, args.img_size, device), k) for k in args.shots
    }
    if args.train:
        measures["train_step"] = (make_episode(args.train_batch, 1, args.img_size, device, seed=1), None)
    for measure, (episode, shots) in measures.items():
        cases = {}
        for m in args.maskings:
            if shots is None:
                cases[f"ours_{m}"] = train_step_fn(ours[m], episode, False)
                cases[f"ref_{m}"] = reference_train_step(refs[m], episode)
            else:
                cases[f"ours_{m}"] = inference_fn(ours[m], episode, False)
                cases[f"ref_{m}"] = reference_inference(refs[m], episode, shots)
        times = time_interleaved(cases, device, repeats=args.repeats, warmup=args.warmup, clock=args.clock)
        results[measure] = times
        med = {name: statistics.median(t) for name, t in times.items()}
        print(
            f"{measure}: "
            + ", ".join(
                f"{m} ours {med[f'ours_{m}']:.3f}s ref {med[f'ref_{m}']:.3f}s "
                f"speed-up {med[f'ref_{m}'] / med[f'ours_{m}']:.2f}x"
                for m in args.maskings
            ),
            flush=True,
        )
        if args.memory:
            memory[measure] = {name: peak_memory(fn, device) for name, fn in cases.items()}
            print(
                f"{measure} peak MiB: "
                + ", ".join(f"{name} {b / 2**20:.0f}" for name, b in memory[measure].items()),
                flush=True,
            )
    return results, memory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hsnet", type=Path, required=True, help="clone of juhongm999/hsnet")
    parser.add_argument("--hm", type=Path, required=True, help="clone of moonsh/HM-Hybrid-Masking-ECCV-2022")
    parser.add_argument("--maskings", nargs="+", default=["hm", "fm"], choices=["hm", "fm"])
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet101"])
    parser.add_argument("--img-size", type=int, default=400)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--train", action="store_true", help="also time a training step")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--clock", choices=("wall", "process"), default="wall", help="CPU timer (see speed.py)"
    )
    parser.add_argument("--memory", action="store_true", help="also measure each case's peak memory")
    parser.add_argument("--out", type=Path, default=None, help="write the times as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.backbone} at {args.img_size} px, "
        f"repeats {args.repeats}, clock {args.clock}"
    )
    with reference_networks(args.hsnet, args.hm) as reference:
        results, memory = compare(args, reference)
    return write_results(args, {"times_s": results, "peak_mem_bytes": memory})


if __name__ == "__main__":
    main()
