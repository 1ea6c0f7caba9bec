"""``fss predict`` on user files: original-size masks, overlays, any K, box supports, clear errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from fss.backbones import ResNet
from fss.cli import main
from fss.data import UserDataError, UserPredictDataModule
from fss.data.transforms import mask_to_bbox
from fss.models.base import aggregate_shots
from fss.task import FewShotSegmentationTask
from fss.visualize import MaskWriter

REPO = Path(__file__).resolve().parents[1]
PREDICT = str(REPO / "configs" / "predict.yaml")
IMG_SIZE = 64
QUERY_SIZES = {"wide": (37, 91), "tall": (120, 45)}  # (height, width)


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fss"])


def _save_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _save_mask(path: Path, size: tuple[int, int], box: tuple[int, int, int, int], value: int = 255) -> Path:
    mask = np.zeros(size, dtype=np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = value
    mask[y0, x0] = 0  # not a box: a bbox support differs from the mask
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """supports/ (2 pairs, different sizes, 0/255 and 0/1 masks) and queries/ (2 odd-sized images)."""
    root = tmp_path_factory.mktemp("user")
    (root / "supports").mkdir()
    (root / "queries").mkdir()
    _save_image(root / "supports" / "cat.jpg", (50, 70), 0)
    _save_mask(root / "supports" / "cat.png", (50, 70), (10, 30, 20, 45))
    _save_image(root / "supports" / "dog.jpeg", (80, 60), 1)
    _save_mask(root / "supports" / "dog.png", (80, 60), (30, 70, 5, 40), value=1)
    for seed, (name, size) in enumerate(QUERY_SIZES.items()):
        _save_image(root / "queries" / f"{name}.png", size, 10 + seed)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task checkpoint in Lightning's format (HSNet, random ResNet-18), saved without training."""
    pl.seed_everything(0)
    task = FewShotSegmentationTask(
        net="hsnet", backbone=ResNet("resnet18", weights=None), masking="hm", num_classes=48
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


def _predict(checkpoint: Path, out: Path, *data_args: str) -> int | None:
    return main(
        [
            "predict", "--config", PREDICT, "--ckpt_path", str(checkpoint),
            "--data.init_args.support_dir", "null", "--data.init_args.query_dir", "null",
            "--data.init_args.img_size", str(IMG_SIZE), *data_args,
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(out / "run"),
            "--trainer.callbacks.output_dir", str(out / "predictions"),
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_predict_folder_writes_original_size_masks_and_overlays(
    files: Path, checkpoint: Path, tmp_path: Path
) -> None:
    _predict(
        checkpoint, tmp_path,
        "--data.init_args.support_dir", str(files / "supports"),
        "--data.init_args.query_dir", str(files / "queries"),
    )  # fmt: skip
    out = tmp_path / "predictions"
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["tall.png", "wide.png"]
    # the same prediction computed directly: logits resized to the original size, then the k-shot vote
    task = FewShotSegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    dm = UserPredictDataModule(
        support_dir=str(files / "supports"), query_dir=str(files / "queries"), img_size=64
    )
    dm.setup("predict")
    assert dm.shot == 2
    for episode in dm.dataset:
        h, w = QUERY_SIZES[episode["query_name"]]
        mask = np.asarray(Image.open(out / "masks" / f"{episode['query_name']}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        with torch.no_grad():
            logits = task.net.forward_shots(
                episode["query_img"][None], episode["support_imgs"][None], episode["support_masks"][None]
            )
        expected = aggregate_shots(logits, "vote", (h, w))[0].numpy()
        assert np.array_equal(mask == 255, expected == 1)
        overlay = Image.open(out / "overlays" / f"{episode['query_name']}.jpg")
        # the query panel at full height, the two supports beside it
        assert overlay.height == h and overlay.width > w + 2 * 8


@pytest.mark.slow
def test_predict_lists_one_shot_with_box_supports(files: Path, checkpoint: Path, tmp_path: Path) -> None:
    _predict(
        checkpoint, tmp_path,
        "--data.init_args.support_images", f"[{files / 'supports' / 'cat.jpg'}]",
        "--data.init_args.support_masks", f"[{files / 'supports' / 'cat.png'}]",
        "--data.init_args.query_images", f"[{files / 'queries' / 'tall.png'}]",
        "--data.init_args.support_label", "bbox",
        "--trainer.callbacks.overlay", "false",
    )  # fmt: skip
    mask = Image.open(tmp_path / "predictions" / "masks" / "tall.png")
    assert mask.size == (45, 120)  # PIL: (width, height)
    assert not (tmp_path / "predictions" / "overlays").exists()


def test_support_masks_are_read_binary_and_boxed_on_request(files: Path) -> None:
    common = dict(
        support_images=[str(files / "supports" / "dog.jpeg")],
        support_masks=[str(files / "supports" / "dog.png")],  # a 0/1 mask
        query_images=[str(files / "queries" / "wide.png")],
        img_size=80,
    )
    full = UserPredictDataModule(**common).load_supports()[1]
    boxed = UserPredictDataModule(**common, support_label="bbox").load_supports()[1]
    assert full.shape == (1, 80, 80) and 0 < full.sum() < boxed.sum()
    assert torch.equal(boxed, mask_to_bbox(full))
    episode = UserPredictDataModule(**common).predict_dataloader().dataset[0]
    assert episode["org_query_mask"].shape == QUERY_SIZES["wide"]
    assert episode["org_query_imsize"].tolist() == list(QUERY_SIZES["wide"])


# ------------------------------------------------------------------------------------------ errors
def _module(supports: Path, queries: Path | None = None, **kwargs: object) -> UserPredictDataModule:
    dm = UserPredictDataModule(support_dir=str(supports), query_dir=str(queries or supports), **kwargs)
    dm.setup("predict")
    return dm


def test_error_mask_size_differs_from_image(tmp_path: Path) -> None:
    _save_image(tmp_path / "a.jpg", (40, 50), 0)
    _save_mask(tmp_path / "a.png", (40, 48), (5, 20, 5, 20))
    with pytest.raises(UserDataError, match=r"a\.png is 48x40 but its image .*a\.jpg is 50x40"):
        _module(tmp_path)


@pytest.mark.slow
def test_error_empty_mask_through_the_cli(
    files: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _save_image(tmp_path / "a.jpg", (40, 50), 0)
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(tmp_path / "a.png")
    code = _predict(
        checkpoint, tmp_path,
        "--data.init_args.support_dir", str(tmp_path),
        "--data.init_args.query_dir", str(files / "queries"),
    )  # fmt: skip
    err = capsys.readouterr().err
    # one message, no stack trace: the file, what is wrong, the fix
    assert code == 1 and "Traceback" not in err, err
    assert re.search(r"^fss predict: error: mask .*a\.png is empty.*Paint the object", err, re.M), err


def test_error_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_text("not an image")
    _save_mask(tmp_path / "a.png", (40, 50), (5, 20, 5, 20))
    with pytest.raises(UserDataError, match=r"cannot read image .*a\.jpg"):
        _module(tmp_path)
    broken_query = tmp_path / "q" / "broken.png"
    broken_query.parent.mkdir()
    broken_query.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _save_image(tmp_path / "a.jpg", (40, 50), 0)
    dm = _module(tmp_path, broken_query.parent)
    with pytest.raises(UserDataError, match=r"cannot read image .*broken\.png"):
        dm.dataset[0]


def test_error_no_supports_or_no_queries(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _save_image(tmp_path / "q.jpg", (40, 50), 0)
    with pytest.raises(UserDataError, match=r"no support images found in .*empty"):
        UserPredictDataModule(support_dir=str(tmp_path / "empty"), query_images=[str(tmp_path / "q.jpg")])
    with pytest.raises(UserDataError, match="no support images: set data.support_images"):
        UserPredictDataModule(query_images=[str(tmp_path / "q.jpg")])
    _save_mask(tmp_path / "q.png", (40, 50), (5, 20, 5, 20))
    with pytest.raises(UserDataError, match=r"no query images found in .*empty"):
        UserPredictDataModule(support_dir=str(tmp_path), query_dir=str(tmp_path / "empty"))
    with pytest.raises(UserDataError, match="no query images: set data.query_images or data.query_dir"):
        UserPredictDataModule(support_dir=str(tmp_path))
    with pytest.raises(UserDataError, match=r"query image .*missing\.jpg does not exist"):
        UserPredictDataModule(support_dir=str(tmp_path), query_images=[str(tmp_path / "missing.jpg")])


def test_error_unpaired_support_files(tmp_path: Path) -> None:
    _save_image(tmp_path / "a.jpg", (40, 50), 0)
    with pytest.raises(UserDataError, match=r"support image .*a\.jpg has no mask: add .*a\.png"):
        UserPredictDataModule(support_dir=str(tmp_path), query_images=[str(tmp_path / "a.jpg")])
    with pytest.raises(UserDataError, match="2 support_images but 1 support_masks"):
        UserPredictDataModule(
            support_images=[str(tmp_path / "a.jpg")] * 2,
            support_masks=[str(tmp_path / "a.png")],
            query_images=[str(tmp_path / "a.jpg")],
        )


@pytest.mark.parametrize("keep", [True, False])
def test_python_api_and_keep_predictions(files: Path, checkpoint: Path, tmp_path: Path, keep: bool) -> None:
    """``trainer.predict`` in a notebook: the masks come back (original sizes) unless the writer drops them."""
    dm = UserPredictDataModule(
        support_dir=str(files / "supports"),
        query_images=[str(files / "queries" / "wide.png")],
        img_size=IMG_SIZE,
    )
    task = FewShotSegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu")
    writer = MaskWriter(output_dir=str(tmp_path), overlay=False, keep_predictions=keep)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False)
    out = trainer.predict(task, datamodule=dm)
    assert writer.written == [tmp_path / "masks" / "wide.png"]
    if keep:
        assert [mask.shape for batch in out for mask in batch] == [QUERY_SIZES["wide"]]
    else:
        assert out is None
