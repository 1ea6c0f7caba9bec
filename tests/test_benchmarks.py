"""The benchmark scripts run end to end on tiny settings and write what they promise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import data_speed  # noqa: E402
import reference  # noqa: E402
import reference_eval  # noqa: E402
import speed  # noqa: E402

FAKE_NETWORK = """
import torch
from torch import nn
from torchvision.models import resnet
from .base import feature  # the HM file imports HSNet's package relatively


class HypercorrSqueezeNetwork(nn.Module):
    def __init__(self, backbone, use_original_imgsize):
        super().__init__()
        self.backbone = resnet.resnet50(pretrained=True)  # must not download
        self.head = nn.Conv2d(3, 2, 1)
        self.tag = {tag!r}

    def forward(self, query_img, support_img, support_mask):
        return self.head(query_img * support_mask.mean())

    def predict_mask_nshot(self, batch, nshot):
        votes = sum(self(batch["query_img"], batch["support_imgs"][:, k], batch["support_masks"][:, k]).argmax(1)
                    for k in range(nshot))
        return (votes.float() / nshot >= 0.5).long()

    def compute_objective(self, logit_mask, gt_mask):
        return nn.functional.cross_entropy(logit_mask, gt_mask)

    def train_mode(self):
        self.train()
"""


def _fake_reference(root: Path) -> tuple[Path, Path]:
    """Clones laid out as juhongm999/hsnet (model/, model/base/) and the HM repository (hsnet.py)."""
    hsnet, hm = root / "hsnet", root / "hm"
    (hsnet / "model" / "base").mkdir(parents=True)
    (hsnet / "model" / "base" / "feature.py").write_text("")
    (hsnet / "model" / "hsnet.py").write_text(FAKE_NETWORK.format(tag="fm"))
    hm.mkdir()
    (hm / "hsnet.py").write_text(FAKE_NETWORK.format(tag="hm"))
    return hsnet, hm


def test_speed_benchmark_writes_json_with_hm_fm_side_by_side(tmp_path, capsys):
    out = tmp_path / "speed.json"
    result = speed.main(
        ["--models", "hsnet", "--backbone", "resnet18", "--img-size", "64", "--shots", "1", "2",
         "--repeats", "2", "--warmup", "0", "--train-batch", "1", "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(result["results"]))
    for masking in ("fm", "hm"):
        entry = saved["results"]["hsnet"][masking]
        assert set(entry) == {"infer_1shot", "infer_2shot", "train_step"}
        assert all(len(m["times_s"]) == 2 and m["median_s"] > 0 for m in entry.values())
        assert all(m["peak_mem_bytes"] > 0 for m in entry.values())
    table = capsys.readouterr().out
    assert "hm/fm" in table and "infer_2shot" in table


def test_reference_comparison_builds_the_reference_package_without_downloads(tmp_path, monkeypatch):
    hsnet, hm = _fake_reference(tmp_path)
    out = tmp_path / "ref.json"
    result = reference.main(
        ["--hsnet", str(hsnet), "--hm", str(hm), "--img-size", "64", "--shots", "1", "2", "--repeats", "1",
         "--warmup", "0", "--train", "--train-batch", "1", "--device", "cpu", "--memory", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    times = saved["times_s"]
    assert set(saved["peak_mem_bytes"]) == set(times)
    assert all(b > 0 for per_case in saved["peak_mem_bytes"].values() for b in per_case.values())
    assert times == result["times_s"]
    assert set(times) == {"infer_1shot", "infer_2shot", "train_step"}
    for measure in times.values():
        assert set(measure) == {"ours_hm", "ref_hm", "ours_fm", "ref_fm"}
        assert all(len(t) == 1 and t[0] > 0 for t in measure.values())
    # the assembled package is gone and torchvision is unpatched afterwards
    assert not any(name.startswith(reference.PACKAGE) for name in sys.modules)
    assert reference.resnet.resnet50.__name__ == "resnet50"


def test_reference_comparison_names_the_missing_clone(tmp_path):
    hsnet, _ = _fake_reference(tmp_path)
    with pytest.raises(SystemExit, match="--hm must point to a clone"):
        reference.main(["--hsnet", str(hsnet), "--hm", str(tmp_path / "nowhere")])


def test_speed_benchmark_times_a_baseline_checkout_alternately(capsys):
    repo = BENCHMARKS.parent  # this checkout doubles as its own baseline
    result = speed.main(
        ["--models", "hsnet", "--maskings", "hm", "--backbone", "resnet18", "--img-size", "64", "--shots", "1",
         "--repeats", "1", "--warmup", "0", "--no-train", "--device", "cpu", "--baseline", str(repo)]
    )  # fmt: skip
    timed = result["results"]["hsnet"]
    assert set(timed) == {"hm", "baseline_hm"}
    assert timed["baseline_hm"]["infer_1shot"]["median_s"] > 0
    assert "speed-up" in capsys.readouterr().out
    assert not any(name.startswith(speed.BASELINE) for name in sys.modules)


def test_speed_benchmark_rejects_a_baseline_that_is_not_a_checkout(tmp_path):
    with pytest.raises(SystemExit, match="no fss/models package"):
        speed.main(["--models", "hsnet", "--baseline", str(tmp_path)])


def test_cpu_peak_memory_counts_the_tensors_alive_together():
    cpu = torch.device("cpu")
    mb4 = 1_000_000  # float32 elements: 4 MB

    def three_alive() -> float:
        a, b = torch.ones(mb4), torch.ones(mb4)
        return float((a + b).sum())  # a, b and a + b at once: 12 MB

    def one_alive() -> None:
        for _ in range(3):
            float(torch.ones(mb4).sum())  # each freed before the next: 4 MB

    assert 12e6 <= speed.peak_memory(three_alive, cpu) < 12.1e6
    assert 4e6 <= speed.peak_memory(one_alive, cpu) < 4.1e6


def test_data_speed_times_a_baseline_checkout_alternately(capsys):
    repo = BENCHMARKS.parent  # this checkout doubles as its own baseline
    result = data_speed.main(
        ["--episodes", "4", "--img-size", "32", "--image-size", "32", "--batch-size", "2", "--workers", "0",
         "--repeats", "1", "--baseline", str(repo)]
    )  # fmt: skip
    assert set(result) == {"PASCAL-5i", "COCO-20i (png)", "COCO-20i (json)", "FSS-1000"}
    assert all(r[0]["ours"] > 0 and r[0]["baseline"] > 0 for r in result.values())
    assert "ours/base" in capsys.readouterr().out
    assert not any(name.startswith(speed.BASELINE) for name in sys.modules)


def test_reference_eval_names_what_it_needs(tmp_path):
    with pytest.raises(SystemExit):  # argparse: --masking hm without --hm
        reference_eval.parse_args(["--reference", "x", "--root", "y", "--ckpt", "random", "--masking", "hm"])
    with pytest.raises(SystemExit):  # HSNet's FSS-1000 loader has no original-size mode
        reference_eval.parse_args(
            [
                "--reference",
                "x",
                "--root",
                "y",
                "--ckpt",
                "random",
                "--benchmark",
                "fss",
                "--use-original-imgsize",
            ]
        )
    with pytest.raises(SystemExit, match="must be a clone of juhongm999/hsnet"):
        reference_eval.main(["--reference", str(tmp_path), "--root", str(tmp_path), "--ckpt", "random"])


@pytest.mark.slow
def test_reference_eval_agrees_with_the_public_hsnet_on_a_fixture(tmp_path, capsys):
    """Needs a clone of juhongm999/hsnet in FSS_HSNET_REF (it is not part of this repository)."""
    import os

    clone = os.environ.get("FSS_HSNET_REF")
    if not clone:
        pytest.skip("set FSS_HSNET_REF to a clone of https://github.com/juhongm999/hsnet to run this check")
    status = reference_eval.main(
        ["--reference", clone, "--benchmark", "pascal", "--root", str(tmp_path), "--make-fixture",
         "--backbone", "resnet50", "--ckpt", "random", "--episodes", "20", "--img-size", "128", "--device", "cpu"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0 and "agree to the printed precision: yes" in out
    assert not any(name.split(".")[0] in reference_eval.REFERENCE_PACKAGES for name in sys.modules)
