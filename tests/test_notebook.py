"""notebooks/compare_curves.ipynb runs headless on a tiny study made here (so it cannot rot)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.test_study import run_tiny_study

nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e '.[dev]')")
nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e '.[dev]')")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_curves.ipynb"


def _kernel_of_this_python(directory: Path) -> Path:
    """A ``python3`` kernelspec running this interpreter (the venv), found first through JUPYTER_PATH."""
    spec_dir = directory / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (fss venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return directory


@pytest.mark.slow
def test_compare_curves_notebook_runs_on_a_tiny_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_dir = run_tiny_study(tmp_path, wandb=False)
    monkeypatch.setenv("FSS_STUDY_DIR", str(study_dir))
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_of_this_python(tmp_path / "jupyter")))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    texts = []
    images = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            texts.append(output.get("text", "") + data.get("text/markdown", "") + data.get("text/plain", ""))
            images += "image/png" in data
    text = "\n".join(texts)
    assert "2 runs, variants ['fm', 'hm'], folds [0]" in text
    assert "| best epoch | 0 | mean |" in text and "Number of best epochs" in text
    assert "| class | fm | hm |" in text  # the per-class IoU table
    assert images >= 2  # the curves and the per-class bars
