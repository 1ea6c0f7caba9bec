"""``fss pretrain``: train a backbone as a classifier of the synthetic benchmark's *training* classes.

With a random frozen backbone, HSNet-FM and -HM predict background for hundreds of steps; a
backbone that has learnt to tell the synthetic objects apart gives the study realistic features.
To stay a fair few-shot benchmark it sees only the classes of the training folds: fold ``fold``'s
12 classes (the val/test classes of the few-shot runs) are never rendered, neither as the object
nor as a distractor.

Each training image is ``fss.data.synthetic.render_scene(rng, img_size, c, 0, 0)``: the scene of
one training class ``c`` (one or two instances on the cluttered background, no distractors),
ImageNet-normalised like the episodes; the label is ``c``'s position in the training class list.
Images are drawn from ``numpy.random.default_rng([seed, 0, fold, step])`` for training and
``[seed, 1, fold, i]`` for the held-out evaluation renders (fresh scenes of the same classes).

Writes ``output`` (a torchvision ``state_dict`` without ``fc.*``, loadable with
``model.backbone.weights: PATH``) and ``output`` with suffix ``.json`` (fold, classes, accuracy, time)::

    fss pretrain --config configs/pretrain_synthetic.yaml
    fss fit --config configs/demo.yaml --model.backbone.weights runs/pretrain_synthetic/resnet18_fold0.pth
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from torch import Tensor, nn

from fss.data.synthetic import SyntheticFSS, render_scene
from fss.data.transforms import normalize_array_


def training_classes(fold: int) -> list[int]:
    """The synthetic classes a backbone for held-out fold ``fold`` may see (the other folds')."""
    return SyntheticFSS.split_class_ids("train", fold)


def render_batch(
    class_ids: list[int], labels: np.ndarray, img_size: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Normalised single-class scenes float [N, 3, S, S] and their labels long [N].

    Args:
        class_ids: the global class id of each label.
        labels: [N] indices into ``class_ids``.
    """
    imgs = np.empty((len(labels), 3, img_size, img_size), dtype=np.float32)
    for i, label in enumerate(labels):
        imgs[i], _ = render_scene(rng, img_size, class_ids[int(label)], 0, 0)
    normalize_array_(imgs)
    return torch.from_numpy(imgs), torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def accuracy(net: nn.Module, class_ids: list[int], img_size: int, images: int, seed: int, fold: int) -> float:
    """Top-1 accuracy (%) on ``images`` fresh renders of ``class_ids`` (balanced, own RNG stream)."""
    net.eval()
    correct, batch = 0, 100
    for start in range(0, images, batch):
        n = min(batch, images - start)
        labels = np.arange(start, start + n) % len(class_ids)
        x, y = render_batch(class_ids, labels, img_size, np.random.default_rng([seed, 1, fold, start]))
        correct += int((net(x).argmax(dim=1) == y).sum())
    net.train()
    return 100.0 * correct / images


def pretrain(
    output: str = "runs/pretrain_synthetic/resnet18_fold0.pth",
    fold: int = 0,
    backbone: str = "resnet18",
    img_size: int = 64,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    eval_images: int = 720,
    seed: int = 0,
    num_threads: int | None = None,
) -> dict:
    """Train ``backbone`` to classify the training classes of ``fold``; save it; return the summary.

    Args:
        output: path of the saved state_dict (``.pth``); a ``.json`` summary is written beside it.
        fold: the held-out fold of the few-shot runs that will use the backbone (its classes are never shown).
        backbone: torchvision ResNet name (``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``).
        img_size: side of the square renders (use the study's ``data.img_size``).
        steps: optimisation steps (AdamW, cosine learning-rate decay).
        batch_size: renders per step (balanced over the training classes within a few steps).
        lr: peak learning rate; weight_decay: AdamW weight decay.
        eval_images: held-out renders of the training classes for the accuracy (0: skip).
        seed: seed of the weights' initialisation and of the renders.
        num_threads: torch CPU threads (None: torch's default).
    """
    if not 0 <= fold < SyntheticFSS.num_folds:
        raise ValueError(f"fss pretrain: fold must be in [0, {SyntheticFSS.num_folds}), got {fold}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"fss pretrain: steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if not hasattr(torchvision.models, backbone) or not backbone.startswith("resnet"):
        raise ValueError(
            f"fss pretrain: backbone must be a torchvision ResNet (resnet18, ...), got {backbone!r}"
        )
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    class_ids = training_classes(fold)
    torch.manual_seed(seed)
    net = getattr(torchvision.models, backbone)(weights=None, num_classes=len(class_ids))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    net.train()
    start = time.monotonic()
    running = 0.0
    for step in range(steps):
        rng = np.random.default_rng([seed, 0, fold, step])
        labels = rng.integers(0, len(class_ids), size=batch_size)
        x, y = render_batch(class_ids, labels, img_size, rng)
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            print(
                f"[pretrain] step {step + 1}/{steps} loss {running:.3f} ({time.monotonic() - start:.0f} s)",
                flush=True,
            )
    train_time = time.monotonic() - start
    acc = accuracy(net, class_ids, img_size, eval_images, seed, fold) if eval_images > 0 else None
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, out)
    summary = {
        "backbone": backbone,
        "fold": fold,
        "train_class_ids": class_ids,
        "held_out_class_ids": SyntheticFSS.split_class_ids("val", fold),
        "img_size": img_size,
        "steps": steps,
        "batch_size": batch_size,
        "train_time_s": round(train_time, 1),
        "heldout_render_accuracy": acc,
        "eval_images": eval_images,
        "chance_accuracy": 100.0 / len(class_ids),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    acc_text = "n/a" if acc is None else f"{acc:.1f}%"
    print(
        f"[pretrain] {backbone} on {len(class_ids)} training classes of fold {fold}: {train_time:.0f} s, "
        f"accuracy on {eval_images} held-out renders {acc_text} (chance {100 / len(class_ids):.1f}%); saved {out}",
        flush=True,
    )
    return summary


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="fss pretrain",
        description="Train a ResNet classifier on the synthetic training classes of one fold (never the "
        "held-out fold's) and save it as a torchvision state_dict for model.backbone.weights.",
        allow_abbrev=False,  # an option prefix is never taken for the option
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML config, e.g. configs/pretrain_synthetic.yaml"
    )
    parser.add_function_arguments(pretrain)
    return parser


def output_path(config: str | Path) -> Path:
    """The ``output`` a pretrain config will write (the default when it does not say)."""
    raw = yaml.safe_load(Path(config).read_text()) or {}
    default = build_parser().get_defaults().output
    return Path(raw.get("output", default))


def parse_options(argv: list[str]) -> dict:
    """The keyword arguments of :func:`pretrain` given by ``fss pretrain`` arguments (config and overrides)."""
    cfg = build_parser().parse_args(argv)
    return {k: v for k, v in cfg.as_dict().items() if k != "config"}


def main(argv: list[str] | None = None) -> int:
    """``fss pretrain``."""
    pretrain(**parse_options(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
