"""Multi-process (DDP) runs: the same numbers as one process, every callback safe, no hang, clean exit.

Two CPU processes (gloo backend) are launched by Lightning through the real CLI
(``python -m fss ... --trainer.devices 2 --trainer.strategy ddp``). The ``validate`` and
``test`` metrics over an odd number of episodes (41: shards of 21 and 20) must equal those of
a single-process run to the last digit written in ``metrics.csv``: every episode is counted
exactly once, with no padding duplicate, and the logged value comes from the synchronised
integer metric states.

The shipped demo config's callbacks (episode figures, best epoch, checkpointing, offline W&B) run in
a two-process fit, validate and test (with the study's test-results writer), and ``fss predict``
with the mask writer splits the queries over the processes. Every run has ``--ddp_timeout 60``: a
callback that calls a collective on one rank only (``trainer.log_dir`` behind ``is_global_zero``
deadlocked the demo before) fails these tests within a minute instead of hanging. A rank that
stops makes the others fail within ``ddp_timeout`` with a message saying so. Every run must end
with exit status 0 and no "terminate called" abort (the process group is destroyed before exit).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fss.cli import main
from fss.data import SyntheticDataModule
from fss.task import FewShotSegmentationTask

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
PREDICT = str(REPO / "configs" / "predict.yaml")

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


def run_fss(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m fss ARGS`` in a subprocess (Lightning spawns the other ranks from it)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    timeout = [] if "--ddp_timeout" in args else ["--ddp_timeout", "60"]
    result = subprocess.run(
        [sys.executable, "-m", "fss", *args, *timeout],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, (
            f"fss {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
        assert "terminate called" not in result.stderr, result.stderr[-3000:]
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


#: a tiny BAM (random base learner over the 36 training classes) for the GFSS test
BAM = ["--model.net", "BAM", "--model.net.reduce_dim", "16", "--model.net.num_base_classes", "36"]


def test_two_processes_give_identical_gfss_metrics(config: Path, tmp_path: Path) -> None:
    """GFSS test episodes (``data.gfss``): the synchronised GFSS states give the one-process numbers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["fss"])
        main(["fit", "--config", str(config), *BAM, "--trainer.default_root_dir", str(tmp_path / "fit")])
    (ckpt,) = (tmp_path / "fit").glob("version_*/checkpoints/last.ckpt")
    # tau 0: every pixel is novel under the "final" merge, so the novel IoUs are not all zero
    common = ["--config", str(config), *BAM, "--ckpt_path", str(ckpt), "--data.init_args.gfss", "true",
              "--model.gfss_tau", "0.0"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["fss"])
        main(["test", *common, "--trainer.default_root_dir", str(one)])
    run_fss(["test", *common, *DDP, "--trainer.default_root_dir", str(two)], cwd=tmp_path)
    single, multi = logged(one), logged(two)
    keys = [f"test/gfss/{k}" for k in ("miou_n", "miou_b", "miou_t", "fbiou", "piou")]
    assert float(single["test/gfss/miou_n"]) > 0, f"degenerate predictions: {single}"
    assert [multi[k] for k in keys] == [single[k] for k in keys]
    results = [json.loads(next(d.rglob("test_results.json")).read_text())["gfss"] for d in (one, two)]
    assert results[0] == results[1]


#: the demo config, tiny: 64 px, 2 x 4 training episodes per process, 6 validation episodes (3 + 3)
DEMO_TINY = [
    "--config", DEMO, *DDP, "--trainer.accelerator", "cpu",
    "--data.init_args.img_size", "64", "--data.init_args.batch_size", "2",
    "--data.init_args.train_episodes", "8", "--data.init_args.val_episodes", "6",
    "--data.init_args.test_episodes", "6", "--trainer.enable_progress_bar", "false",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The demo config (figures, best epoch, checkpoints, offline W&B) fitted for 2 epochs by 2 processes."""
    root = tmp_path_factory.mktemp("ddp_demo")
    result = run_fss(
        ["fit", *DEMO_TINY, "--trainer.max_epochs", "2", "--trainer.num_sanity_val_steps", "-1",
         "--trainer.default_root_dir", str(root)],
        cwd=root,
    )  # fmt: skip
    return root, result


def test_demo_fit_with_every_callback(demo_fit: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, result = demo_fit
    (run,) = root.glob("version_*")
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # 8 training episodes, 2 per batch, over 2 processes: 2 optimisation steps per epoch
    assert (last["epoch"], last["global_step"]) == (2, 4)
    assert list((run / "checkpoints").glob("best-epoch=*.ckpt"))
    best = json.loads((run / "best.json").read_text())
    assert best["epochs_run"] == 2 and best["initial_val_miou"] is not None
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    assert list((root / "wandb").glob("offline-run-*"))
    assert {"train/loss", "val/miou", "val/fbiou", "best_epoch"} <= set(logged(root))
    assert result.stdout.count("summary in") == 1  # rank 0 only


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_demo_evaluation_with_every_callback(
    subcommand: str, demo_fit: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    (ckpt,) = demo_fit[0].glob("version_*/checkpoints/last.ckpt")
    # TestResultsWriter is on every run (key test_results)
    run_fss([subcommand, *DEMO_TINY, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path)],
            cwd=tmp_path)  # fmt: skip
    (run,) = tmp_path.glob("version_*")
    stage = "test" if subcommand == "test" else "val"
    assert {f"{stage}/miou", f"{stage}/fbiou"} <= set(logged(tmp_path))
    if subcommand == "test":
        results = json.loads((run / "test_results.json").read_text())
        assert results["test_miou"] == pytest.approx(float(logged(tmp_path)["test/miou"]))
        assert (run / "figures" / "test_epoch_000.png").is_file()


def test_predict_splits_the_queries_over_the_processes(
    demo_fit: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    (ckpt,) = demo_fit[0].glob("version_*/checkpoints/last.ckpt")
    supports, queries = tmp_path / "supports", tmp_path / "queries"
    supports.mkdir()
    queries.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(supports / "a.jpg")
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(supports / "a.png")
    names = [f"q{i}" for i in range(5)]  # odd: 3 + 2
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (30 + i, 45, 3), dtype=np.uint8)).save(queries / f"{name}.png")
    out = tmp_path / "predictions"
    result = run_fss(
        ["predict", "--config", PREDICT, *DDP, "--trainer.accelerator", "cpu", "--ckpt_path", str(ckpt),
         "--data.init_args.support_dir", str(supports), "--data.init_args.query_dir", str(queries),
         "--data.init_args.img_size", "64", "--trainer.enable_progress_bar", "false",
         "--trainer.callbacks.output_dir", str(out), "--trainer.default_root_dir", str(tmp_path / "run")],
        cwd=tmp_path,
    )  # fmt: skip
    assert sorted(p.stem for p in (out / "masks").iterdir()) == names
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == names
    for i, name in enumerate(names):  # every mask at its query's original size
        assert Image.open(out / "masks" / f"{name}.png").size == (45, 30 + i)
    # each process predicted its own share: the total is counted once, by rank 0
    assert result.stdout.count("MaskWriter: wrote") == 1 and "wrote 5 masks" in result.stdout


def test_a_stuck_rank_makes_the_others_fail_within_ddp_timeout(config: Path, tmp_path: Path) -> None:
    stall = tmp_path / "stall.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["callbacks"] = [
        {"class_path": "tests.faults.StallRank", "init_args": {"rank": 0, "batch": 0, "seconds": 900}}
    ]
    stall.write_text(yaml.safe_dump(cfg))
    # 60 s: the timeout also bounds the start (rank 0 waits that long for rank 1 to import and connect)
    args = ["fit", "--config", str(stall), *DDP, "--trainer.default_root_dir", str(tmp_path), "--ddp_timeout", "60"]  # fmt: skip
    start = time.monotonic()
    result = run_fss(args, cwd=tmp_path, check=False)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 400, f"the run took {elapsed:.0f} s: the stuck rank was waited for"
    message = "[rank 1] fss fit: error: rank 1: a collective waited longer than ddp_timeout (60 s)"
    assert message in result.stderr, result.stderr[-4000:]
