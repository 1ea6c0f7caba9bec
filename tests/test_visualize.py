"""Overlays, the prediction writer on model-size batches, and the episode-figure callback in a real fit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fss.cli import build_cli, main
from fss.data.transforms import normalize_image
from fss.visualize import (
    PREDICTION_COLOUR,
    SUPPORT_COLOUR,
    EpisodeFigures,
    MaskWriter,
    overlay_panel,
    tint,
    to_rgb_uint8,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fss"])


def test_tint_blends_inside_outlines_the_edge_and_keeps_the_rest() -> None:
    img = np.full((8, 8, 3), 100, dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    out = tint(img, mask, (200, 0, 0), alpha=0.5)
    assert out[3, 3].tolist() == [150, 50, 50]  # interior: half-way to the colour
    assert out[2, 2].tolist() == [200, 0, 0]  # edge: the colour itself
    assert (out[~mask] == 100).all()
    with pytest.raises(ValueError, match="differ in size"):
        tint(img, mask[:4], (0, 0, 0))


def test_overlay_panel_puts_supports_beside_the_query_at_its_height() -> None:
    query = np.zeros((30, 50, 3), dtype=np.uint8)
    pred = np.zeros((30, 50), dtype=bool)
    pred[5:10, 5:10] = True
    support = (np.zeros((20, 10, 3), dtype=np.uint8), np.ones((20, 10), dtype=bool))
    panel = overlay_panel(query, pred, [support, support], gap=4)
    assert panel.shape == (30, 50 + 2 * (4 + 15), 3)  # supports scaled to height 30: width 15
    assert panel[7, 7].tolist() == [round(0.5 * c) for c in PREDICTION_COLOUR]
    assert panel[15, 54 + 7].tolist() == [round(0.5 * c) for c in SUPPORT_COLOUR]
    big = overlay_panel(np.zeros((300, 600, 3), np.uint8), np.zeros((300, 600), bool), [], max_side=100)
    assert big.shape == (50, 100, 3)


def test_to_rgb_uint8_undoes_the_normalisation() -> None:
    img = torch.rand(3, 5, 6)
    back = to_rgb_uint8(normalize_image(img.clone()))
    assert (
        back.shape == (5, 6, 3)
        and np.abs(back.astype(float) / 255 - img.permute(1, 2, 0).numpy()).max() < 0.01
    )


def test_mask_writer_on_model_size_batches(tmp_path: Path) -> None:
    """Without user files (e.g. predicting a benchmark's test split): masks at the model size, safe names."""
    writer = MaskWriter(output_dir=str(tmp_path))
    batch = {
        "query_img": torch.zeros(2, 3, 16, 16),
        "support_imgs": torch.zeros(2, 3, 3, 16, 16),
        "support_masks": torch.ones(2, 3, 16, 16),
        "query_name": ["synthetic/test/fold0/000000/query", "synthetic/test/fold0/000001/query"],
    }
    prediction = torch.zeros(2, 16, 16, dtype=torch.long)
    prediction[1, 4:8, 4:12] = 1
    writer.write_on_batch_end(None, None, prediction, None, batch, 0)  # type: ignore[arg-type]
    mask = np.asarray(Image.open(tmp_path / "masks" / "synthetic_test_fold0_000001_query.png"))
    assert mask.shape == (16, 16) and mask.sum() == 255 * 32 and mask[5, 5] == 255
    overlay = Image.open(tmp_path / "overlays" / "synthetic_test_fold0_000000_query.jpg")
    assert overlay.size == (16 + 3 * (8 + 16), 16)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EpisodeFigures]:
    """Two tiny epochs of the demo config (offline W&B; it lists EpisodeFigures), then a test run."""
    root = tmp_path_factory.mktemp("fit")
    tiny = [
        "--config", DEMO,
        "--data.init_args.img_size", "64", "--data.init_args.batch_size", "2",
        "--data.init_args.train_episodes", "2", "--data.init_args.val_episodes", "4",
        "--data.init_args.test_episodes", "2",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "1",
        "--trainer.default_root_dir", str(root),
        "--trainer.callbacks.num_episodes", "3",  # the demo config's EpisodeFigures (the last callback)
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        cli = build_cli(["fit", *tiny, "--trainer.max_epochs", "2"])
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, EpisodeFigures)]
    return root, callback


@pytest.mark.slow
def test_episode_figures_every_epoch_same_episodes_and_wandb(fitted: tuple[Path, EpisodeFigures]) -> None:
    root, callback = fitted
    (run,) = sorted(root.glob("version_*"))
    figures = run / "figures"
    assert sorted(p.name for p in figures.iterdir()) == ["epoch_000.png", "epoch_001.png"]  # no sanity figure
    assert callback.saved == [figures / "epoch_000.png", figures / "epoch_001.png"]
    # the first 3 validation episodes (two batches), the same ones in both epochs
    expected = [f"synthetic/val/fold0/{i:06d}/query" for i in range(3)]
    assert callback.drawn_names == [expected, expected]
    with Image.open(figures / "epoch_001.png") as img:
        assert img.width > 300 and img.height > 3 * 150  # 3 rows of (support, prediction, truth)
    logged = list((root / "wandb").glob("offline-run-*/files/media/images/val/episodes_*.png"))
    assert len(logged) == 2, "the figure was not sent to the W&B logger"


@pytest.mark.slow
def test_episode_figures_at_test(fitted: tuple[Path, EpisodeFigures], tmp_path: Path) -> None:
    root, _ = fitted
    (run,) = sorted(root.glob("version_*"))
    main(
        [
            "test", "--config", str(run / "config.yaml"),
            "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
        ]
    )  # fmt: skip
    # Trainer.test restores the weights, not the loop state: the epoch counter is 0
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["test_epoch_000.png"]
