"""Outputs of the public iFSL FS-CS models (HSNet, ASNet, ASNet-HM) for fss's parity test.

The reference code is *not* part of this repository. Clone it and point this script at the clone::

    git clone https://github.com/dahyun-kang/ifsl /tmp/ifsl
    pip install einops                      # the reference needs it; fss does not
    python benchmarks/fscs_reference.py --ifsl /tmp/ifsl --out /tmp/fscs_reference.pt
    FSS_FSCS_REF=/tmp/fscs_reference.pt pytest tests/models/test_fscs.py

It builds each reference network of ``fs-cs/model`` (``hsnet``, ``asnet``, ``asnethm``; ASNet also
with ``--weak``), loads the golden random ResNet-50 (``/work/shared/golden`` or ``--golden``, see its
README) and the golden random learner weights (``hsnet_resnet50.pt`` for HSNet, ``asnet_resnet50.pt``
for ASNet and ASNet-HM: the FS-CS learners are the FS-S ones; ``--learner seed`` instead draws them
with ``torch.manual_seed(0)``) and runs, on the golden inputs
(two 400 x 400 queries with three supports each), in the reference's training-mode upsampling (to the
400 px query, which is also the original size here):

* ``forward`` -> the per-way log-probabilities ``shared_masks`` [B, N, 2, 100, 100], then
  ``predict_cls_and_mask`` -> class presence ``pred_cls`` [B, N], the merged (N+1)-class
  log-probabilities ``logit_seg`` [B, N+1, 400, 400] and the mask ``pred_seg``, for 1 way (support 0)
  and 2 ways (supports 0 and 1);
* ``predict_mask_nshot`` for 2 ways x 2 shots (way 0: supports 0, 1; way 1: supports 1, 2).

Support masks are given twice: ``binary`` (0/1, as fss's data modules give them) and ``indexed``
(way n's mask holds n + 1, as the reference's loaders give them). The file holds every learner's
``state_dict`` and those outputs, keyed ``<model>/<case>/<masks>/<output>``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import random_torchvision  # noqa: E402

#: reference method name -> (module under fs-cs/model, class name)
METHODS = {
    "hsnet": ("model.hsnet", "HypercorrSqueezeNetwork"),
    "asnet": ("model.asnet", "AttentiveSqueezeNetwork"),
    "asnethm": ("model.asnethm", "AttentiveSqueezeNetworkHM"),
}
#: episode layouts: name -> the golden support index of each (way, shot)
LAYOUTS = {"way1": [[0]], "way2": [[0], [1]], "way2shot2": [[0, 1], [1, 2]]}


@contextlib.contextmanager
def reference_path(fscs_dir: Path) -> Iterator[None]:
    """Make ``fs-cs`` importable (its packages ``model``, ``common``, ``data``) while active."""
    sys.path.insert(0, str(fscs_dir))
    try:
        yield
    finally:
        sys.path.remove(str(fscs_dir))
        for name in [m for m in sys.modules if m.split(".")[0] in ("model", "common", "data")]:
            del sys.modules[name]


def fscs_supports(
    support_imgs: Tensor, support_masks: Tensor, layout: list[list[int]], indexed: bool
) -> tuple[Tensor, Tensor]:
    """[B, N, K, 3, H, W] images and [B, N, K, H, W] masks picked from the golden shots."""
    imgs = torch.stack([torch.stack([support_imgs[:, k] for k in row], 1) for row in layout], 1)
    masks = torch.stack(
        [
            torch.stack([support_masks[:, k] * (n + 1 if indexed else 1) for k in row], 1)
            for n, row in enumerate(layout)
        ],
        1,
    )
    return imgs, masks


#: reference method -> (golden file, prefix of its learner keys)
GOLDEN_LEARNERS = {
    "hsnet": ("hsnet_resnet50.pt", "hpn_learner."),
    "asnet": ("asnet_resnet50.pt", "learner."),
    "asnethm": ("asnet_resnet50.pt", "learner."),
}


def golden_learner(golden: Path, method: str) -> dict[str, Tensor]:
    """The golden random learner weights of ``method`` (float32, keys relative to the learner)."""
    file, prefix = GOLDEN_LEARNERS[method]
    state = torch.load(golden / file, weights_only=True)["learner_state_dict_fp16"]
    return {k.removeprefix(prefix): v.float() for k, v in state.items()}


def run(ifsl: Path, golden: Path, learner: str = "golden") -> dict[str, object]:
    """The outputs (see the module docstring) of every reference model on the golden inputs."""
    inputs = torch.load(golden / "inputs.pt", weights_only=True)
    backbone = {
        k: v.float() if v.is_floating_point() else v
        for k, v in torch.load(golden / "resnet50_random_fp16.pt", weights_only=True).items()
    }
    query, support_imgs, support_masks = inputs["query_img"], inputs["support_imgs"], inputs["support_masks"]
    out: dict[str, object] = {}
    with reference_path(ifsl / "fs-cs"), random_torchvision():
        for method, (module, cls_name) in METHODS.items():
            cls = getattr(importlib.import_module(module), cls_name)
            for weak in (False, True) if method == "asnet" else (False,):
                name = method + ("_weak" if weak else "")
                args = Namespace(way=1, weak=weak, backbone="resnet50", lr=1e-3, shot=1, vis=False)
                torch.manual_seed(0)
                model = cls(args)
                model.backbone.load_state_dict(backbone)
                if learner == "golden":
                    model.learner.load_state_dict(golden_learner(golden, method))
                model.train()
                model.backbone.eval()  # train-mode upsampling: to the query's 400 px
                out[f"{name}/learner_state_dict"] = {
                    k: v.clone() for k, v in model.learner.state_dict().items()
                }
                for case, layout in LAYOUTS.items():
                    way, shot = len(layout), len(layout[0])
                    model.way = model.learner.way = model.args.way = way
                    for masks_kind in ("binary", "indexed") if way > 1 else ("binary",):
                        imgs, masks = fscs_supports(
                            support_imgs, support_masks, layout, masks_kind == "indexed"
                        )
                        batch = {"query_img": query, "support_imgs": imgs, "support_masks": masks}
                        key = f"{name}/{case}/{masks_kind}"
                        with torch.no_grad():
                            if shot == 1:
                                shared = model.forward(dict(batch))
                                pred_cls, pred_seg, logit_seg = model.predict_cls_and_mask(shared, batch)
                                out[f"{key}/shared_masks"] = shared
                                out[f"{key}/logit_seg"] = logit_seg
                            else:
                                pred_cls, pred_seg = model.predict_mask_nshot(dict(batch), shot)
                        out[f"{key}/pred_cls"] = pred_cls.bool()
                        out[f"{key}/pred_seg"] = pred_seg.to(torch.uint8)
                        print(key, "presence", pred_cls.int().tolist(), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ifsl", type=Path, required=True, help="a clone of github.com/dahyun-kang/ifsl")
    default_golden = os.environ.get(
        "FSS_GOLDEN_DIR", Path(__file__).resolve().parents[2] / "shared" / "golden"
    )
    parser.add_argument("--golden", type=Path, default=Path(default_golden), help="the golden inputs")
    parser.add_argument("--out", type=Path, required=True, help="where to save the outputs (torch.save)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--learner", choices=("golden", "seed"), default="golden", help="learner weights (see above)"
    )
    args = parser.parse_args(argv)
    if not (args.ifsl / "fs-cs" / "model" / "ifsl.py").is_file():
        parser.error(f"--ifsl {args.ifsl} is not a clone of the iFSL repository (no fs-cs/model/ifsl.py)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.save(run(args.ifsl, args.golden, args.learner), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
