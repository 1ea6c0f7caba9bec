"""``fss test`` on GFSS episodes (``--data.init_args.gfss true``) with a tiny BAM trained through the CLI:
the GFSS numbers land in ``test_results.json`` and the logged metrics, and equal what
:class:`fss.metrics.GFSSIoU` computes on the same model's merged predictions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fss.cli import build_cli
from fss.data import SyntheticDataModule
from fss.metrics import GFSS_KEYS, GFSSIoU, merge_gfss
from fss.task import FewShotSegmentationTask
from tests.test_models_cli import DEMO, NET_ARGS, TINY_RUN

TEST_EPISODES = 6


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fss"])


def test_fss_test_reports_bam_gfss_metrics(tmp_path: Path) -> None:
    build_cli(
        ["fit", "--config", DEMO, *TINY_RUN, *NET_ARGS["bam"], "--trainer.max_epochs", "1",
         "--trainer.default_root_dir", str(tmp_path / "fit"), "--trainer.logger", "false"]
    )  # fmt: skip
    ckpt = next((tmp_path / "fit").rglob("last.ckpt"))
    # tau 0: every pixel is novel under the "final" merge, so the novel IoUs are not all zero
    options = ["--data.init_args.test_episodes", str(TEST_EPISODES), "--data.init_args.gfss", "true",
               "--model.gfss_merge", "final", "--model.gfss_tau", "0.0"]  # fmt: skip
    test = build_cli(
        ["test", "--config", DEMO, *TINY_RUN, *NET_ARGS["bam"], *options, "--ckpt_path", str(ckpt),
         "--trainer.default_root_dir", str(tmp_path / "test")]
    )  # fmt: skip
    results = json.loads(next((tmp_path / "test").rglob("test_results.json")).read_text())
    gfss = results["gfss"]
    assert gfss["merge"] == "final" and gfss["merge_tau"] == 0.0
    assert set(GFSS_KEYS) <= set(gfss) and len(gfss["per_class_iou"]) == 48
    logged = test.trainer.callback_metrics
    for key in GFSS_KEYS:
        assert float(logged[f"test/gfss/{key}"]) == pytest.approx(gfss[key], abs=1e-4)
    assert "test_miou" in results  # the FS-S numbers on the novel class's masks stay

    # the same episodes and checkpoint, merged and scored here
    task = FewShotSegmentationTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = test.datamodule
    assert isinstance(dm, SyntheticDataModule) and dm.gfss
    metric = GFSSIoU(sorted(dm.train_class_ids), dm.eval_class_ids)
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            out = task.net.forward_outputs(batch["query_img"], batch["support_imgs"], batch["support_masks"])
            size = batch["query_img"].shape[-2:]
            final, base = (
                F.interpolate(out[k], size, mode="bilinear", align_corners=True) for k in ("final", "base")
            )
            metric.update(merge_gfss(final, base, "final", 0.0), batch["gfss_mask"], batch["class_id"])
    values = {k: float(v) for k, v in metric.compute().items()}
    assert values == pytest.approx({k: gfss[k] for k in GFSS_KEYS}, abs=1e-4)
    assert values["miou_n"] > 0 and values["piou"] > 0  # not a vacuous comparison


def test_gfss_needs_a_model_with_a_base_learner(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.gfss: .*base learner \(BAM\); HSNet has none"):
        build_cli(
            ["test", "--config", DEMO, *TINY_RUN, "--data.init_args.gfss", "true",
             "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
        )  # fmt: skip
