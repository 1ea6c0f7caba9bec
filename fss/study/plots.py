"""Learning-curve figures of a study (matplotlib's object API: no pyplot state, safe in threads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fss.study.config import Study
from fss.study.tables import mean_std


def mean_curve(curves: list[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and standard deviation over the ``curves`` ({epoch: value}) that reach each epoch."""
    epochs = sorted(set().union(*curves)) if curves else []
    stats = [mean_std([c.get(e) for c in curves]) for e in epochs]
    return epochs, [m for m, _ in stats], [s for _, s in stats]


def _with_initial(record: dict[str, Any]) -> dict[int, float]:
    initial = record.get("initial_val_miou")
    return record["curve"] if initial is None else {-1: float(initial), **record["curve"]}


def curves_figure(records: list[dict[str, Any]], folds: list[int], title: str = "") -> Figure:
    """val mIoU per epoch, a panel per fold, a line per variant (mean over seeds) with a ±std band.

    Uses matplotlib's object API (no pyplot state), so it is safe in notebooks and threads.
    """
    fig = Figure(figsize=(5.5 * len(folds), 4), layout="tight")
    variants = list(dict.fromkeys(r["variant"] for r in records))
    for k, fold in enumerate(folds):
        ax = fig.add_subplot(1, len(folds), k + 1)
        for i, variant in enumerate(variants):
            # the untrained model's score (full sanity check), when recorded, is drawn at epoch -1
            curves = [
                _with_initial(r)
                for r in records
                if r["variant"] == variant and r["fold"] == fold and r["curve"]
            ]
            if not curves:
                continue
            epochs, mean, std = mean_curve(curves)
            colour = f"C{i % 10}"
            ax.plot(epochs, mean, color=colour, marker=".", label=f"{variant} (n={len(curves)})")
            if len(curves) > 1:
                low = [m - s for m, s in zip(mean, std)]
                high = [m + s for m, s in zip(mean, std)]
                ax.fill_between(epochs, low, high, color=colour, alpha=0.2)
        ax.set_title(f"{title}: fold {fold}" if title else f"fold {fold}")
        ax.set_xlabel("epoch (-1: before training)")
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def plot_curves(study: Study, records: list[dict[str, Any]], path: Path) -> None:
    """Save :func:`curves_figure` of ``records`` as a PNG."""
    fig = curves_figure(records, study.folds, study.name)
    FigureCanvasAgg(fig).print_png(str(path))
