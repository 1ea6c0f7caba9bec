"""Seeing what a few-shot segmenter does: mask overlays, episode figures and the callbacks that save them.

* :func:`tint`, :func:`overlay_panel`: an image with a mask tinted over it; a query with its
  prediction beside its support set (supports tinted blue, the prediction red, as in the HM paper).
* :class:`MaskWriter`: a prediction writer for ``fss predict``. For every query it writes
  ``<output_dir>/masks/<query>.png`` (the predicted binary mask, 0/255, at the size of the
  prediction: the query's original size with :class:`fss.data.UserPredictDataModule`) and
  ``<output_dir>/overlays/<query>.jpg`` (the query with the prediction tinted, its supports beside it).
* :class:`EpisodeFigures`: a callback that draws a fixed handful of validation (and test) episodes
  after every validation epoch: support images with their masks, the query with the prediction,
  the query with the ground truth. Saved as ``<log_dir>/figures/epoch_XXX.png`` (test:
  ``test_epoch_XXX.png``) and sent to W&B (``logger.log_image``) when a WandbLogger is attached.

Drawing uses NumPy, PIL and matplotlib's object API with the Agg canvas (no pyplot, no display,
no global backend switch).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter, Callback
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from fss.data.episode import IGNORE_INDEX
from fss.data.transforms import denormalize_image
from fss.distributed import run_dir

#: RGB tints: support masks blue, predictions (and ground truth) red, as in the HM paper's figures
SUPPORT_COLOUR: tuple[int, int, int] = (30, 110, 255)
PREDICTION_COLOUR: tuple[int, int, int] = (255, 40, 40)

RGBImage = np.ndarray  # uint8 [H, W, 3]


# ------------------------------------------------------------------------------------------ drawing
def to_rgb_uint8(img: Tensor) -> RGBImage:
    """An ImageNet-normalised image [3, H, W] as uint8 RGB [H, W, 3]."""
    rgb = denormalize_image(img.detach().float().cpu())
    return (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (bool [H, W]) with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def tint(img: RGBImage, mask: np.ndarray, colour: Sequence[int], alpha: float = 0.5) -> RGBImage:
    """``img`` (uint8 [H, W, 3]) with ``colour`` blended in where ``mask`` (bool [H, W]) is set, outlined."""
    if img.shape[:2] != mask.shape:
        raise ValueError(f"tint: image {img.shape[:2]} and mask {mask.shape} differ in size")
    out = img.astype(np.float32)
    c = np.asarray(colour, dtype=np.float32)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * c
    out[_edges(mask)] = c
    return out.round().astype(np.uint8)


def resize_rgb(img: RGBImage, size: tuple[int, int]) -> RGBImage:
    """Resize uint8 [H, W, 3] to ``size`` = (height, width) bilinearly."""
    if img.shape[:2] == tuple(size):
        return img
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize bool [H, W] to ``size`` = (height, width) with nearest-neighbour."""
    if mask.shape == tuple(size):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(img) > 127


def overlay_panel(
    query: RGBImage,
    prediction: np.ndarray,
    supports: Sequence[tuple[RGBImage, np.ndarray]],
    max_side: int | None = 1024,
    alpha: float = 0.5,
    gap: int = 8,
) -> RGBImage:
    """The query with its prediction tinted red, then each support with its mask tinted blue.

    Args:
        query: uint8 [H, W, 3].
        prediction: bool [H, W].
        supports: K pairs (uint8 [h_k, w_k, 3], bool [h_k, w_k]).
        max_side: the query panel is shrunk so that its longer side is at most this (None: never).
        alpha: tint opacity.
        gap: white pixels between panels.

    Returns:
        uint8 [h, W_total, 3]: all panels at the query panel's height h, side by side.
    """
    h, w = query.shape[:2]
    scale = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    panels = [tint(resize_rgb(query, size), resize_mask(prediction, size), PREDICTION_COLOUR, alpha)]
    for img, mask in supports:
        sh, sw = img.shape[:2]
        s_size = (size[0], max(1, round(sw * size[0] / sh)))
        panels.append(tint(resize_rgb(img, s_size), resize_mask(mask, s_size), SUPPORT_COLOUR, alpha))
    spacer = np.full((size[0], gap, 3), 255, dtype=np.uint8)
    parts = [panels[0]]
    for panel in panels[1:]:
        parts += [spacer, panel]
    return np.concatenate(parts, axis=1)


def _safe_name(name: str) -> str:
    """A file name from an episode name (``synthetic/test/fold0/000001/query`` -> ``synthetic_test_...``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "query"


# ------------------------------------------------------------------------------------------ predict
class MaskWriter(BasePredictionWriter):
    """Write every predicted mask as a PNG, and an overlay image, during ``fss predict``.

    Per query (named by the episode's ``query_name``, made file-safe):

    * ``<output_dir>/masks/<name>.png``: mode ``L``, 255 = predicted foreground, 0 = background,
      the size of the prediction (the original query size when the batch carries
      ``org_query_mask``, as :class:`fss.data.UserPredictDataModule` batches do);
    * ``<output_dir>/overlays/<name>.jpg`` (when ``overlay``): :func:`overlay_panel` of the query
      (read from ``query_path`` when the batch has it, else the model input) and the support set
      with the masks the model was given (boxes with ``support_label: bbox``).

    Args:
        output_dir: where to write; ``None`` means ``<run dir>/predictions`` (the logger's directory).
        overlay: also write the overlay images.
        overlay_max_side: longest side of the query panel in the overlay (larger queries are shrunk).
        alpha: tint opacity in the overlay.
        keep_predictions: ``False`` stops the Trainer from also keeping every mask in memory (the
            masks are on disk; ``trainer.predict`` then returns ``None``). A callback option rather
            than ``return_predictions: false`` so that the config also parses for other subcommands.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        overlay: bool = True,
        overlay_max_side: int = 1024,
        alpha: float = 0.5,
        keep_predictions: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"MaskWriter: alpha must be in [0, 1], got {alpha}")
        self.output_dir = output_dir
        self.overlay = overlay
        self.overlay_max_side = overlay_max_side
        self.alpha = alpha
        self.keep_predictions = keep_predictions
        self.written: list[Path] = []  # mask files written by this process in the last run
        self.total_written = 0  # mask files written by all processes in the last run
        self._support_cache: dict[str, RGBImage] = {}
        self._dir: Path | None = None

    def resolved_dir(self, trainer: pl.Trainer) -> Path:
        """The output directory for ``trainer`` (a collective under DDP when ``output_dir`` is None)."""
        return Path(self.output_dir) if self.output_dir is not None else run_dir(trainer) / "predictions"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written = []
        self.total_written = 0
        self._support_cache = {}
        # every rank asks here, once: the ranks may write different numbers of batches
        self._dir = self.resolved_dir(trainer)
        if not self.keep_predictions:
            trainer.predict_loop.return_predictions = False

    def _support_rgb(self, path: str) -> RGBImage:
        from fss.data.user import read_user_image  # local: the data package is not needed otherwise

        if path not in self._support_cache:
            self._support_cache[path] = read_user_image(path)
        return self._support_cache[path]

    def _query_rgb(self, batch: dict[str, Any], i: int, size: tuple[int, int]) -> RGBImage:
        if "query_path" in batch:
            from fss.data.user import read_user_image

            img = read_user_image(batch["query_path"][i])
            if img.shape[:2] == size:
                return img
        else:
            img = to_rgb_uint8(batch["query_img"][i])
        return resize_rgb(img, size)

    def _supports(self, batch: dict[str, Any], i: int) -> list[tuple[RGBImage, np.ndarray]]:
        masks = batch["support_masks"][i].detach().cpu().numpy() > 0.5  # [K, S, S]
        paths = batch.get("support_paths")
        out = []
        for k, mask in enumerate(masks):
            if paths is not None:
                img = self._support_rgb(paths[i][k])
                out.append((img, resize_mask(mask, img.shape[:2])))
            else:
                out.append((to_rgb_uint8(batch["support_imgs"][i, k]), mask))
        return out

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write the masks ([H, W] each: a [B, H, W] tensor or a list of B tensors) of one batch."""
        out = self._dir if self._dir is not None else self.resolved_dir(trainer)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        if self.overlay:
            (out / "overlays").mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(prediction):
            name = _safe_name(batch["query_name"][i])
            m = mask.detach().cpu().numpy().astype(bool)  # [H, W]
            path = out / "masks" / f"{name}.png"
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(path)
            self.written.append(path)
            if self.overlay:
                query = self._query_rgb(batch, i, m.shape)
                panel = overlay_panel(query, m, self._supports(batch, i), self.overlay_max_side, self.alpha)
                Image.fromarray(panel).save(out / "overlays" / f"{name}.jpg", quality=90)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the sum over ranks is a collective: every rank takes part
        count = torch.tensor(len(self.written), dtype=torch.long, device=pl_module.device)
        self.total_written = int(trainer.strategy.reduce(count, reduce_op="sum"))
        if trainer.is_global_zero and self.total_written:
            print(f"MaskWriter: wrote {self.total_written} masks to {self._dir}", flush=True)


# ------------------------------------------------------------------------------------------ figures
def _iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Foreground IoU (%) of bool ``pred`` against a 0/1/255 ``target``, ignore pixels excluded."""
    valid = target != IGNORE_INDEX
    fg = target == 1
    inter = np.count_nonzero(pred & fg & valid)
    union = np.count_nonzero((pred | fg) & valid)
    return 100.0 * inter / union if union else 100.0


def episode_figure(episodes: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """A grid of episodes, one row each: K supports (mask blue) | query + prediction (red) | query + truth.

    Args:
        episodes: dicts with ``support_imgs`` uint8 [K, S, S, 3], ``support_masks`` bool [K, S, S],
            ``query`` uint8 [S, S, 3], ``prediction`` bool [S, S], ``target`` long [S, S] (0/1/255)
            and ``name`` (str). K may differ between rows.
        title: the figure's title.
    """
    cols = max(len(ep["support_imgs"]) for ep in episodes) + 2
    rows = len(episodes)
    fig = Figure(figsize=(2.0 * cols, 2.1 * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, ep in enumerate(episodes):
        k = len(ep["support_imgs"])
        panels = [
            (tint(img, m, SUPPORT_COLOUR), f"support {j + 1}")
            for j, (img, m) in enumerate(zip(ep["support_imgs"], ep["support_masks"]))
        ]
        panels += [(None, "")] * (cols - 2 - k)
        iou = _iou(ep["prediction"], ep["target"])
        panels.append(
            (tint(ep["query"], ep["prediction"], PREDICTION_COLOUR), f"prediction ({iou:.0f}% IoU)")
        )
        panels.append((tint(ep["query"], ep["target"] == 1, PREDICTION_COLOUR), "ground truth"))
        for ax, (img, label) in zip(axes[r], panels):
            ax.set_axis_off()
            if img is not None:
                ax.imshow(img)
                ax.set_title(label, fontsize=8)
        axes[r][0].text(
            -0.04, 0.5, ep["name"][-28:], transform=axes[r][0].transAxes, rotation=90, fontsize=6,
            ha="right", va="center",
        )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.05 / fig.get_figheight(), va="top")
    # fixed margins (inches turned into fractions): tight_layout would double the drawing time
    top = 1.0 - 0.55 / fig.get_figheight()
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=top, wspace=0.05, hspace=0.2)
    return fig


class EpisodeFigures(Callback):
    """Save a figure of the same few validation episodes after every validation epoch (and at test).

    The episodes are the first ``num_episodes`` of the (unshuffled, fixed) validation loader of
    process 0, so every epoch shows the same ones. After the epoch they are predicted again in one
    batch with ``pl_module.predict_step`` (without ``org_query_mask``, at the model's size) and
    drawn with :func:`episode_figure` into ``<log_dir>/<dirname>/epoch_XXX.png`` (test:
    ``test_epoch_XXX.png``); with a WandbLogger the figure is also logged as ``val/episodes``
    (``test/episodes``). The sanity check is skipped.

    Args:
        num_episodes: episodes (rows) per figure.
        dirname: sub-directory of the run directory.
        test: also draw the first test episodes at test time.
        max_shots: supports drawn per episode (K is capped for width).
    """

    def __init__(
        self, num_episodes: int = 4, dirname: str = "figures", test: bool = True, max_shots: int = 5
    ):
        super().__init__()
        if num_episodes < 1 or max_shots < 1:
            raise ValueError("EpisodeFigures: num_episodes and max_shots must be >= 1")
        self.num_episodes = num_episodes
        self.dirname = dirname
        self.test = test
        self.max_shots = max_shots
        self.saved: list[Path] = []  # figures written, in order
        self.drawn_names: list[list[str]] = []  # the query names of each saved figure
        self._batches: list[dict[str, Any]] = []
        self._count = 0

    # -- collecting ------------------------------------------------------------------------
    def _reset(self) -> None:
        self._batches, self._count = [], 0

    def _collect(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        if dataloader_idx != 0 or self._count >= self.num_episodes:
            return
        n = min(self.num_episodes - self._count, batch["query_img"].shape[0])
        keys = ("query_img", "query_mask", "support_imgs", "support_masks", "class_id")
        part = {key: batch[key][:n].detach().cpu() for key in keys}
        part["support_imgs"] = part["support_imgs"][:, : self.max_shots]
        part["support_masks"] = part["support_masks"][:, : self.max_shots]
        names = batch.get("query_name")
        part["query_name"] = (
            list(names[:n]) if names is not None else [f"episode {self._count + j}" for j in range(n)]
        )
        self._batches.append(part)
        self._count += n

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._collect(batch, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.test:
            self._collect(batch, dataloader_idx)

    # -- drawing ---------------------------------------------------------------------------
    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        out_dir = run_dir(trainer) / self.dirname  # every rank: a collective under DDP
        if not self._batches or not trainer.is_global_zero:
            self._reset()
            return
        shots = {b["support_imgs"].shape[1] for b in self._batches}
        episodes = []
        with torch.no_grad():
            for part in self._batches:  # one forward per collected batch (shapes may differ across batches)
                inputs = {k: v.to(pl_module.device) if isinstance(v, Tensor) else v for k, v in part.items()}
                preds = pl_module.predict_step(inputs, 0)
                for j in range(part["query_img"].shape[0]):
                    episodes.append(
                        {
                            "support_imgs": [to_rgb_uint8(img) for img in part["support_imgs"][j]],
                            "support_masks": list(part["support_masks"][j].numpy() > 0.5),
                            "query": to_rgb_uint8(part["query_img"][j]),
                            "prediction": preds[j].detach().cpu().numpy().astype(bool),
                            "target": part["query_mask"][j].numpy(),
                            "name": str(part["query_name"][j]),
                        }
                    )
        epoch = trainer.current_epoch
        prefix = "" if stage == "val" else f"{stage}_"
        path = out_dir / f"{prefix}epoch_{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shot_text = "/".join(str(k) for k in sorted(shots))
        fig = episode_figure(episodes, f"{stage} episodes, epoch {epoch} ({shot_text}-shot)")
        fig.savefig(path)
        self.saved.append(path)
        self.drawn_names.append([ep["name"] for ep in episodes])
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"{stage}/episodes", images=[str(path)], step=trainer.global_step)
        self._reset()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.test:
            self._draw(trainer, pl_module, "test")
