"""Multi-process (DDP) runs give the same evaluation numbers as one process.

Two CPU processes (gloo backend) are launched by Lightning through the real CLI
(``python -m fss ... --trainer.devices 2 --trainer.strategy ddp``). The ``validate`` and
``test`` metrics over an odd number of episodes (41: shards of 21 and 20) must equal those of
a single-process run to the last digit written in ``metrics.csv``: every episode is counted
exactly once, with no padding duplicate, and the logged value comes from the synchronised
integer metric states. A two-process fit must run its steps and write a checkpoint.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fss.cli import main
from fss.data import SyntheticDataModule
from fss.task import FewShotSegmentationTask

pytestmark = pytest.mark.slow

EPISODES = 41  # odd: the two ranks get 21 and 20 episodes
#: the tiny experiment of every run here: ResNet-18 (random init), 64 px synthetic episodes
CONFIG = {
    "seed_everything": 0,
    "model": {
        "net": "hsnet",
        "backbone": {
            "class_path": "fss.backbones.ResNet",
            "init_args": {"name": "resnet18", "weights": None},
        },
        "masking": "hm",
    },
    "data": {
        "class_path": "fss.data.SyntheticDataModule",
        "init_args": {
            "fold": 0,
            "shot": 1,
            "img_size": 64,
            "batch_size": 2,
            "eval_batch_size": 4,  # 21 = 5 x 4 + 1: the last batch of rank 0 is short
            "num_workers": 0,
            "train_episodes": 8,
            "val_episodes": EPISODES,
            "test_episodes": EPISODES,
            "seed": 0,
        },
    },
    "trainer": {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
    },
}
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp_config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def run_fss(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m fss ARGS`` in a subprocess (Lightning spawns the other ranks from it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "fss", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (
        f"fss {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result


def logged(root: Path) -> dict[str, str]:
    """The non-empty values of ``metrics.csv`` under ``root``, as written (strings)."""
    (path,) = root.glob("version_*/metrics.csv")
    values: dict[str, str] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            values.update({k: v for k, v in row.items() if v})
    return values


@pytest.fixture(scope="module")
def checkpoint(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a one-process tiny fit, its foreground bias shifted so predictions are mixed.

    A few random-init steps predict background everywhere (mIoU 0), which would make the comparison
    trivial; the shift puts the median foreground-minus-background logit at 0 on validation episodes.
    """
    root = tmp_path_factory.mktemp("ddp_fit1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["fss"])
        main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root)])
    (ckpt_path,) = root.glob("version_*/checkpoints/last.ckpt")
    task = FewShotSegmentationTask.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
    data = SyntheticDataModule(**{**CONFIG["data"]["init_args"], "val_episodes": 8, "eval_batch_size": 8})
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        logits = task(batch["query_img"], batch["support_imgs"], batch["support_masks"])
    shift = (logits[:, 1] - logits[:, 0]).median()
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    key = "net.hpn_learner.decoder2.2.bias"
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + torch.tensor([0.0, -float(shift)])
    out = root / "mixed.ckpt"
    torch.save(ckpt, out)
    return out


STAGES = [("validate", "val"), ("test", "test")]


@pytest.mark.parametrize(("subcommand", "stage"), STAGES)
def test_two_processes_give_identical_metrics(
    subcommand: str, stage: str, config: Path, checkpoint: Path, tmp_path: Path
) -> None:
    common = ["--config", str(config), "--ckpt_path", str(checkpoint)]
    one, two = tmp_path / "one", tmp_path / "two"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["fss"])
        main([subcommand, *common, "--trainer.default_root_dir", str(one)])
    run_fss([subcommand, *common, *DDP, "--trainer.default_root_dir", str(two)], cwd=tmp_path)
    single, multi = logged(one), logged(two)
    miou, fbiou = f"{stage}/miou", f"{stage}/fbiou"
    assert 1.0 < float(single[miou]) < 99.0, (
        f"degenerate predictions, the comparison would prove little: {single}"
    )
    assert (multi[miou], multi[fbiou]) == (single[miou], single[fbiou])


def test_two_process_fit_writes_a_checkpoint(config: Path, tmp_path: Path) -> None:
    run_fss(["fit", "--config", str(config), *DDP, "--trainer.default_root_dir", str(tmp_path)], cwd=tmp_path)
    (ckpt_path,) = tmp_path.glob("version_*/checkpoints/last.ckpt")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    # 8 training episodes, 2 per batch, over 2 processes: 2 optimisation steps
    assert ckpt["global_step"] == 2
    values = logged(tmp_path)
    assert {"train/loss", "val/miou", "val/fbiou"} <= set(values)
