"""A study's results: per-run records read from the run directories, summaries over seeds, the tables.

:func:`fss.study.command.report` writes them with the curves into the study directory.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fss.metrics import spread

if TYPE_CHECKING:
    from fss.study.config import Study

MEASURES: tuple[tuple[str, str], ...] = (
    ("best_epoch", "Number of best epochs (0-based epoch of the best val mIoU)"),
    ("epoch_95", "Epoch reaching 95% of the run's best val mIoU (0-based)"),
    ("best_val_miou", "Best val mIoU (%)"),
    ("test_miou", "Test mIoU (%) of the best checkpoint"),
    ("test_fbiou", "Test FB-IoU (%) of the best checkpoint"),
    ("wall_time_s", "Wall-clock time of fit (s)"),
)
#: the measures that also get a 95% confidence interval (over a group's runs, or over one run's
#: test episode sets, ``data.test_seeds``)
SPREAD_MEASURES: tuple[str, ...] = ("test_miou", "test_fbiou")
RUN_COLUMNS: tuple[str, ...] = (
    "variant",
    "fold",
    "seed",
    "best_epoch",
    "epoch_95",
    "best_val_miou",
    "test_miou",
    "test_fbiou",
    "test_sets",
    "test_miou_sets_std",
    "test_miou_ci95_low",
    "test_miou_ci95_high",
    "test_fbiou_sets_std",
    "test_fbiou_ci95_low",
    "test_fbiou_ci95_high",
    "epochs_run",
    "wall_time_s",
    "initial_val_miou",
    "status",
    "run_dir",
)


def read_curve(metrics_csv: Path, key: str = "val/miou") -> dict[int, float]:
    """``{epoch: value}`` of ``key`` from a CSVLogger ``metrics.csv`` (the last row of an epoch wins)."""
    curve: dict[int, float] = {}
    if not metrics_csv.is_file():
        return curve
    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            value, epoch = row.get(key), row.get("epoch")
            if value not in (None, "") and epoch not in (None, ""):
                curve[int(float(epoch))] = float(value)
    return dict(sorted(curve.items()))


def epoch_reaching(curve: dict[int, float], fraction: float = 0.95) -> int | None:
    """First epoch whose value reaches ``fraction`` of the curve's best (None for an empty curve)."""
    if not curve:
        return None
    target = fraction * max(curve.values())
    return next(epoch for epoch, value in curve.items() if value >= target)


def collect(study: Study) -> list[dict[str, Any]]:
    """One record per run (missing values are None; ``status`` is done / fit only / missing)."""
    records = []
    for run in study.runs():
        best = _read_json(run.best_json) if run.best_json is not None else {}
        test = _read_json(run.test_dir / "test_results.json")
        curve = run.curve()
        record: dict[str, Any] = {
            "variant": run.variant,
            "fold": run.fold,
            "seed": run.seed,
            "best_epoch": best.get("best_epoch"),
            "epoch_95": epoch_reaching(curve),
            "best_val_miou": best.get("best_val_miou"),
            "test_miou": test.get("test_miou"),
            "test_fbiou": test.get("test_fbiou"),
            "test_sets": len(test.get("episode_sets", [])) or (1 if test else None),
            **_set_spread(test),
            "epochs_run": best.get("epochs_run"),
            "wall_time_s": best.get("wall_time_s"),
            "initial_val_miou": best.get("initial_val_miou"),
            "status": "done" if best and test else ("fit only" if best else "missing"),
            "run_dir": str(run.root),
            "curve": curve,
            "per_class_iou": test.get("per_class_iou", {}),
        }
        records.append(record)
    return records


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _set_spread(test: dict[str, Any]) -> dict[str, Any]:
    """A run's spread over its test episode sets (``test_results.json``; None with one set)."""
    out: dict[str, Any] = {}
    for key in SPREAD_MEASURES:
        spread = test.get(f"{key.removeprefix('test_')}_spread") or {}
        out[f"{key}_sets_std"] = spread.get("std")
        out[f"{key}_ci95_low"] = spread.get("ci95_low")
        out[f"{key}_ci95_high"] = spread.get("ci95_high")
    return out


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(records: list[dict[str, Any]], folds: list[int]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (variant, fold), and per variant over everything (fold ``mean``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["variant"], str(r["fold"]))].append(r)
        groups[(r["variant"], "mean")].append(r)
    rows = []
    for (variant, fold), members in groups.items():
        row: dict[str, Any] = {
            "variant": variant,
            "fold": fold,
            "runs": sum(m["status"] == "done" for m in members),
        }
        for key, _ in MEASURES:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([m[key] for m in members])
        for key in SPREAD_MEASURES:
            row[f"{key}_ci95_low"], row[f"{key}_ci95_high"], row[f"{key}_ci95_over"] = _interval(members, key)
        rows.append(row)
    order = {str(f): i for i, f in enumerate(folds)} | {"mean": len(folds)}
    variants = list(dict.fromkeys(r["variant"] for r in records))
    return sorted(rows, key=lambda r: (variants.index(r["variant"]), order[r["fold"]]))


def _interval(members: list[dict[str, Any]], key: str) -> tuple[float | None, float | None, str | None]:
    """95% CI of ``key``: over the group's runs when there are several (Student's t), else over the
    single run's test episode sets when it has several; ``(low, high, "runs" | "episode sets")``."""
    values = [m[key] for m in members if m.get(key) is not None]
    if len(values) >= 2:
        s = spread(values)
        return s["ci95_low"], s["ci95_high"], "runs"
    if len(values) == 1:
        (member,) = [m for m in members if m.get(key) is not None]
        if member.get(f"{key}_ci95_low") is not None:
            return member[f"{key}_ci95_low"], member[f"{key}_ci95_high"], "episode sets"
    return None, None, None


def _cell(mean: float | None, std: float | None, key: str) -> str:
    if mean is None:
        return "–"
    whole = key == "wall_time_s" or (not std and float(mean).is_integer())
    digits = 0 if whole else 1
    text = f"{mean:.{digits}f}"
    return text if not std else f"{text} ± {std:.{digits}f}"


def markdown(study: Study, summary: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """The study's Markdown report: one table per measure, rows = variants, columns = folds / mean."""
    cells = {(r["variant"], r["fold"]): r for r in summary}
    variants = list(dict.fromkeys(r["variant"] for r in summary))
    columns = [str(f) for f in study.folds] + ["mean"]
    done = sum(r["status"] == "done" for r in records)
    lines = [
        f"# Study `{study.name}`",
        "",
        f"Base config `{study.base_config}`; swept: "
        + ", ".join(f"`{o}` ∈ {{{', '.join(map(str, v))}}}" for o, v in study.sweep.items())
        + f"; folds {study.folds}; seeds {study.seeds}. Runs finished: {done}/{len(records)}. "
        "Cells: mean ± standard deviation over seeds (the mean column: over all folds and seeds).",
    ]
    for key, title in MEASURES:
        lines += [
            "",
            f"## {title}",
            "",
            "| method | " + " | ".join(f"fold{c}" if c != "mean" else "mean" for c in columns) + " |",
        ]
        lines.append("|---" * (len(columns) + 1) + "|")
        for variant in variants:
            row = []
            for c in columns:
                cell = cells[(variant, c)]
                text = _cell(cell[f"{key}_mean"], cell[f"{key}_std"], key)
                if key in SPREAD_MEASURES and cell.get(f"{key}_ci95_low") is not None:
                    text += f" [{cell[f'{key}_ci95_low']:.1f}, {cell[f'{key}_ci95_high']:.1f}]"
                row.append(text)
            lines.append(f"| {variant} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
