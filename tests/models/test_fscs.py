"""FS-CS (iFSL) parity of HSNet, ASNet and ASNet-HM: log-probabilities, class presence, masks.

The reference is the public iFSL code (github.com/dahyun-kang/ifsl, ``fs-cs/model``: ``hsnet``,
``asnet``, ``asnet --weak``, ``asnethm``) run by ``benchmarks/fscs_reference.py`` *outside* this
repository, on the golden inputs and weights of ``/work/shared/golden`` (the random ResNet-50 and the
random HSNet / ASNet learners; the FS-CS learners are the FS-S ones). Its cases: 1 way (support 0),
2 ways (supports 0 and 1), 2 ways x 2 shots (way 0: supports 0, 1; way 1: supports 1, 2), with 0/1
support masks (``binary``) and, for 2 ways, the reference loaders' way-index masks (``indexed``).

* ``fscs_golden.json`` (next to this file) is a small part of one such run, written by
  ``python -m tests.models.test_fscs <output of benchmarks/fscs_reference.py>``: per case the class
  presence, the per-way log-probabilities ``shared_masks`` at every 20th pixel, the (N+1)-class
  log-probabilities ``logit_seg`` at every 80th pixel, and the pixel count of each predicted label.
  :func:`test_regression_golden` compares fss with it whenever the golden inputs are present.
* With ``FSS_FSCS_REF`` pointing at a full output of that script (``--learner golden`` or ``seed``;
  the learner weights are read from it), :func:`test_reference_outputs` compares every case in full.

Parity: relative error <= 1e-4 for the log-probabilities, identical presence, and predicted masks
that differ in at most 0.1% of the pixels (argmax ties of nearly equal random-weight maps).
"""

from __future__ import annotations

import json
import os
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import Tensor

from fss.models import ASNet, FewShotSegmenter, HSNet
from fss.models.ifsl import episode_way_logits, predict_episode, way_index_masks
from tests.models.conftest import golden_dir, load_golden, relative_error

GOLDEN_JSON = Path(__file__).with_name("fscs_golden.json")
#: reference method -> (fss network class, masking, class tags only)
METHODS = {
    "hsnet": (HSNet, "fm", False),
    "asnet": (ASNet, "none", False),
    "asnet_weak": (ASNet, "none", True),
    "asnethm": (ASNet, "hm", False),
}
#: the golden file of each method's learner (the FS-S learners)
LEARNER_FILES = {"hsnet": "hsnet_resnet50.pt", "asnet": "asnet_resnet50.pt", "asnethm": "asnet_resnet50.pt"}
#: the golden support index of each (way, shot), as benchmarks/fscs_reference.py
LAYOUTS = {"way1": [[0]], "way2": [[0], [1]], "way2shot2": [[0, 1], [1, 2]]}
#: subsampling strides of the stored log-probabilities
LOG_PROB_STRIDE, MERGED_STRIDE = 20, 80


def cases() -> list[tuple[str, str, str]]:
    """(method, layout, masks) of every reference case."""
    return [
        (method, layout, masks)
        for method in METHODS
        for layout in LAYOUTS
        for masks in (("binary", "indexed") if len(LAYOUTS[layout]) > 1 else ("binary",))
    ]


def episode(inputs: dict, layout: str) -> tuple[Tensor, Tensor, Tensor]:
    """Query [2,3,H,W], supports [2,N,K,3,H,W] and 0/1 masks [2,N,K,H,W] of ``layout``."""
    rows = LAYOUTS[layout]
    s, m = inputs["support_imgs"], inputs["support_masks"]
    imgs = torch.stack([torch.stack([s[:, k] for k in row], 1) for row in rows], 1)
    masks = torch.stack([torch.stack([m[:, k] for k in row], 1) for row in rows], 1)
    return inputs["query_img"], imgs, masks


@cache
def network(method: str, learner_source: str | None = None) -> FewShotSegmenter:
    """The fss network of ``method`` with the golden backbone and the golden (or the reference run's) learner."""
    cls, masking, _ = METHODS[method]
    net = cls("resnet50", masking=masking, weights=None).eval()
    net.backbone.load_torchvision_state_dict(load_golden("resnet50_random_fp16.pt"))
    if learner_source is None:
        state = load_golden(LEARNER_FILES[method.removesuffix("_weak")])["learner_state_dict_fp16"]
    else:  # the reference's own names (learner.*: HSNet's alias of hpn_learner)
        reference = torch.load(learner_source, map_location="cpu", weights_only=True)
        state = {f"learner.{k}": v for k, v in reference[f"{method}/learner_state_dict"].items()}
    net.load_reference_state_dict(state)
    return net


@torch.inference_mode()
def run_fss(
    net: FewShotSegmenter, method: str, layout: str, masks_kind: str, inputs: dict
) -> dict[str, Tensor]:
    """fss's outputs for one case, named as the reference's."""
    query, imgs, masks = episode(inputs, layout)
    if METHODS[method][2]:  # class tags only: all-ones masks (the reference: support_mask=None)
        masks = torch.ones_like(masks)
    if masks_kind == "indexed":
        masks = way_index_masks(masks)
    prediction = predict_episode(episode_way_logits(net, query, imgs, masks), tuple(query.shape[-2:]))
    return {
        "shared_masks": prediction.log_probs[:, :, 0],
        "logit_seg": prediction.merged,
        "pred_cls": prediction.presence,
        "pred_seg": prediction.mask,
    }


def label_counts(mask: Tensor, labels: int) -> list[list[int]]:
    """Pixels of each label 0..labels-1 per episode of masks [B, H, W]."""
    return [torch.bincount(m.flatten().long(), minlength=labels).tolist() for m in mask]


def summary(outputs: dict[str, Tensor], way: int) -> dict[str, object]:
    """The small part of a case's outputs kept in ``fscs_golden.json``."""
    out: dict[str, object] = {
        "pred_cls": outputs["pred_cls"].bool().tolist(),
        "label_counts": label_counts(outputs["pred_seg"], way + 1),
    }
    if "shared_masks" in outputs:
        out["shared_masks"] = outputs["shared_masks"][..., ::LOG_PROB_STRIDE, ::LOG_PROB_STRIDE].tolist()
        out["logit_seg"] = outputs["logit_seg"][..., ::MERGED_STRIDE, ::MERGED_STRIDE].tolist()
    return out


def assert_parity(ours: dict[str, object], ref: dict[str, object], pixels: int) -> None:
    assert ours["pred_cls"] == ref["pred_cls"]
    for key in ("shared_masks", "logit_seg"):
        if key in ref:
            assert relative_error(torch.tensor(ours[key]), torch.tensor(ref[key])) <= 1e-4, key
    counts, ref_counts = torch.tensor(ours["label_counts"]), torch.tensor(ref["label_counts"])
    assert (counts - ref_counts).abs().sum(dim=1).max().item() <= 2 * 1e-3 * pixels


# -- the regression golden (always, when the golden inputs are present) ---------------------------------
#: the cases the regression test runs (the 400 px ResNet-50 passes are slow on CPU): every method
#: with 2 ways, the way-index masks of HSNet and ASNet-HM, and the 2-shot rule
REGRESSION_CASES = [
    ("hsnet", "way2", "indexed"),
    ("asnet", "way2", "binary"),
    ("asnet_weak", "way1", "binary"),
    ("asnethm", "way2", "indexed"),
    ("asnethm", "way2shot2", "binary"),
]


@pytest.mark.parametrize(("method", "layout", "masks_kind"), REGRESSION_CASES)
def test_regression_golden(method: str, layout: str, masks_kind: str) -> None:
    golden = json.loads(GOLDEN_JSON.read_text())
    inputs = load_golden("inputs.pt")
    outputs = run_fss(network(method), method, layout, masks_kind, inputs)
    if layout == "way2shot2":  # the reference's K-shot path returns presence and mask only
        outputs = {k: outputs[k] for k in ("pred_cls", "pred_seg")}
    way = len(LAYOUTS[layout])
    assert_parity(summary(outputs, way), golden[f"{method}/{layout}/{masks_kind}"], 400 * 400)


# -- the full comparison, with a run of the reference -----------------------------------------------
def reference_outputs() -> Path:
    path = os.environ.get("FSS_FSCS_REF")
    if not path:
        pytest.skip(
            "FSS_FSCS_REF not set: point it at the output of benchmarks/fscs_reference.py (run on a clone "
            "of github.com/dahyun-kang/ifsl) to compare every FS-CS case in full"
        )
    if not Path(path).is_file():
        pytest.fail(f"FSS_FSCS_REF={path} is not a file: run benchmarks/fscs_reference.py --out {path}")
    golden_dir()  # skips without the golden inputs
    return Path(path)


@pytest.mark.parametrize(("method", "layout", "masks_kind"), cases())
def test_reference_outputs(method: str, layout: str, masks_kind: str) -> None:
    path = reference_outputs()
    reference = torch.load(path, map_location="cpu", weights_only=True)
    key = f"{method}/{layout}/{masks_kind}"
    ours = run_fss(network(method, str(path)), method, layout, masks_kind, load_golden("inputs.pt"))
    assert torch.equal(ours["pred_cls"], reference[f"{key}/pred_cls"])
    if f"{key}/shared_masks" in reference:
        for name in ("shared_masks", "logit_seg"):
            assert relative_error(ours[name], reference[f"{key}/{name}"]) <= 1e-4, name
    differ = (ours["pred_seg"] != reference[f"{key}/pred_seg"].long()).float().mean().item()
    assert differ <= 1e-3


def rounded(value: object) -> object:
    """``value`` with every float rounded to 7 significant digits (far below the 1e-4 tolerance)."""
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def write_golden(reference_file: str) -> None:
    """Write ``fscs_golden.json`` from a full output of ``benchmarks/fscs_reference.py``."""
    reference = torch.load(reference_file, map_location="cpu", weights_only=True)
    golden = {}
    for method, layout, masks_kind in cases():
        key = f"{method}/{layout}/{masks_kind}"
        outputs = {
            name: reference[f"{key}/{name}"]
            for name in ("shared_masks", "logit_seg", "pred_cls", "pred_seg")
            if f"{key}/{name}" in reference
        }
        golden[key] = summary(outputs, len(LAYOUTS[layout]))
    text = json.dumps(rounded(golden), separators=(",", ":"))
    GOLDEN_JSON.write_text(text.replace("]],", "]],\n") + "\n")
    print(f"wrote {GOLDEN_JSON} ({len(golden)} cases)")


if __name__ == "__main__":
    write_golden(sys.argv[1])
