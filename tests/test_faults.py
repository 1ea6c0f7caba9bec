"""Fault injection: every interruption or bad input ends with one clear message, and nothing is lost.

A tiny synthetic fit (32 px, 8 training episodes = 4 steps per epoch, ResNet-18 random, one thread)
runs 3 epochs without interruption: the reference. The same fit is then interrupted in epoch 1
(Ctrl+C = SIGINT, a kill = SIGKILL, a disk that fills up while ``last.ckpt`` is written) and resumed
from ``last.ckpt`` *into the same run directory*; the resumed run must end with exactly the
reference's metrics (every row of ``metrics.csv``), weights and ``best.json``. A dataset image that
becomes unreadable in the middle of an epoch, and truncated or foreign checkpoints, must end the
command with a message naming the file and the fix. The fault callbacks live in ``tests/faults.py``.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fss.atomic
from fss.atomic import AtomicCheckpointIO
from fss.cli import main
from fss.data.check import main as data_main
from tests.data.fixtures import make_fss1000

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
#: the tiny experiment: 4 optimisation steps and 4 validation episodes per epoch
CONFIG = {
    "seed_everything": 0,
    "model": {
        "net": "hsnet",
        "backbone": {
            "class_path": "fss.backbones.ResNet",
            "init_args": {"name": "resnet18", "weights": None},
        },
        "masking": "hm",
        "fg_weight": 4.0,
    },
    "data": {
        "class_path": "fss.data.SyntheticDataModule",
        "init_args": {
            "fold": 0,
            "img_size": 32,
            "batch_size": 2,
            "num_workers": 0,
            "train_episodes": 8,
            "val_episodes": 4,
            "test_episodes": 4,
        },
    },
    "trainer": {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": EPOCHS,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
    },
}
#: the metrics.csv columns compared (everything the run logs but wall-clock values)
COMPARED = ("train/loss", "train/loss_step", "train/miou", "train/fbiou", "val/loss", "val/miou", "val/fbiou")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit-identical runs: one intra-op thread in this process, as in the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "argv", ["fss"])
    yield
    torch.set_num_threads(threads)


def write_config(path: Path, callbacks: list[dict] | None = None, **data: object) -> Path:
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["data"]["init_args"].update(data)
    if "root" in data:
        config["data"]["class_path"] = "fss.data.FSS1000DataModule"
    if callbacks:
        config["trainer"]["callbacks"] = callbacks
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, root: Path, *args: str) -> int | None:
    """``fss fit`` in this process (returns main's exit status: None on success)."""
    return main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *args])


def fit_subprocess(config: Path, root: Path) -> subprocess.CompletedProcess:
    """``python -m fss fit`` in a child process (for faults that end the process)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "fss",
        "fit",
        "--config",
        str(config),
        "--trainer.default_root_dir",
        str(root),
    ]
    # Ctrl+C as in a terminal: a shell without job control starts background jobs with SIGINT ignored,
    # and a Python started so never raises KeyboardInterrupt (the CI runner may be such a job)
    return subprocess.run(
        cmd,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_default_sigint,  # noqa: PLW1509 - no threads are started before the fork
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def last_ckpt(root: Path) -> Path:
    return root / "version_0" / "checkpoints" / "last.ckpt"


def logged(root: Path) -> list[tuple[str, str, dict[str, str]]]:
    """The compared values of ``metrics.csv``, one (epoch, step, values) per row that has any."""
    (path,) = root.glob("version_*/metrics.csv")  # a resumed run continued in the same directory
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            values = {k: row[k] for k in COMPARED if row.get(k)}
            if values:
                rows.append((row["epoch"], row["step"], values))
    return sorted(rows, key=lambda r: (int(r[0]), int(r[1]), sorted(r[2])))


def outcome(root: Path) -> tuple[list, dict[str, torch.Tensor], dict]:
    """metrics.csv rows, final weights and best.json (without wall time) of the run under ``root``."""
    ckpt = torch.load(last_ckpt(root), map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == EPOCHS and ckpt["global_step"] == 4 * EPOCHS
    best = json.loads((root / "version_0" / "best.json").read_text())
    best.pop("wall_time_s")
    assert not list(root.rglob("*.partial")), "a temporary checkpoint file was left behind"
    return logged(root), ckpt["state_dict"], best


def assert_same_outcome(root: Path, reference: tuple) -> None:
    rows, weights, best = outcome(root)
    ref_rows, ref_weights, ref_best = reference
    assert rows == ref_rows
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert best == ref_best


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("faults") / "tiny.yaml")


@pytest.fixture(scope="module")
def reference_root(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run's root directory."""
    root = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["fss"])
            assert fit(config, root) is None
    finally:
        torch.set_num_threads(threads)
    rows = logged(root)
    assert {r[0] for r in rows} == {"0", "1", "2"} and any("val/miou" in r[2] for r in rows)
    # val/miou never improves after epoch 0 here: Lightning 2.6 alone would have left last.ckpt at
    # epoch 0 (it writes last.ckpt only with a new best checkpoint)
    assert [p.name for p in root.glob("version_0/checkpoints/best-*.ckpt")] == ["best-epoch=0.ckpt"]
    return root


@pytest.fixture(scope="module")
def reference(reference_root: Path) -> tuple:
    """The uninterrupted run's metrics, weights and best.json."""
    return outcome(reference_root)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_fit_resumes_to_identical_metrics(
    signum: str, reference: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    killer = {"class_path": "tests.faults.SignalAt", "init_args": {"epoch": 1, "batch": 1, "signum": signum}}
    interrupted = fit_subprocess(write_config(tmp_path / "kill.yaml", [killer]), tmp_path)
    if signum != "SIGKILL":  # Ctrl+C, a preemption: one message saying what is kept and how to resume
        status, said = {"SIGINT": (130, "interrupted."), "SIGTERM": (143, "terminated (SIGTERM).")}[signum]
        assert interrupted.returncode == status, interrupted.stderr[-3000:]
        assert "Traceback" not in interrupted.stderr
        assert f"fss fit: {said}" in interrupted.stderr
        assert f"{last_ckpt(tmp_path)} holds the run after 1 finished epoch(s)" in interrupted.stderr
        assert f"--ckpt_path {last_ckpt(tmp_path)}" in interrupted.stderr
    else:
        assert interrupted.returncode == -9
    # last.ckpt is the end of epoch 0, whatever happened in epoch 1
    ckpt = torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 4)
    assert fit(tmp_path / "kill.yaml", tmp_path, "--ckpt_path", str(last_ckpt(tmp_path)),
               "--trainer.callbacks", "[]") is None  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("version_")) == ["version_0"]
    assert_same_outcome(tmp_path, reference)


def test_a_max_time_stop_is_saved_and_resumed_from_the_next_epoch(config: Path, tmp_path: Path) -> None:
    """``max_time`` ends the running epoch early (Lightning validates it and counts it as finished):
    last.ckpt holds that stop, and a resumed run starts the next epoch."""
    stop = {"class_path": "tests.faults.StopAt", "init_args": {"epoch": 1, "batch": 1}}
    assert fit(write_config(tmp_path / "stop.yaml", [stop]), tmp_path) is None
    ckpt = torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 4 + 2)  # epoch 1 stopped after 2 of its 4 steps
    rows = logged(tmp_path)
    assert any(epoch == "1" and "val/miou" in values for epoch, _, values in rows)  # validated at the stop
    assert fit(config, tmp_path, "--ckpt_path", str(last_ckpt(tmp_path))) is None
    ckpt = torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (3, 6 + 4)
    val_epochs = [epoch for epoch, _, values in logged(tmp_path) if "val/miou" in values]
    assert val_epochs == ["0", "1", "2"]  # each epoch once, in the same run directory


def test_full_disk_while_writing_last_ckpt(
    config: Path,
    reference: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The second last.ckpt write (after epoch 1) fails half-way: the first one must survive intact."""
    real_save, writes = torch.save, []

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if ".last.ckpt." in str(getattr(f, "name", "")):
            writes.append(f.name)
            if len(writes) == 2:
                f.write(b"\0" * 4096)
                raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(fss.atomic.torch, "save", save)
    assert fit(config, tmp_path) == 1
    err = capsys.readouterr().err
    last = last_ckpt(tmp_path)
    assert "Traceback" not in err
    assert (
        f"fss fit: error: cannot write {last}: no space left on the device; the previous version is intact"
        in err
    )
    assert f"{last} holds the run after 1 finished epoch(s)" in err
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 4)
    assert not list(tmp_path.rglob("*.partial"))
    monkeypatch.setattr(fss.atomic.torch, "save", real_save)
    assert fit(config, tmp_path, "--ckpt_path", str(last)) is None
    assert_same_outcome(tmp_path, reference)


def test_kill_during_a_checkpoint_write_with_tmpdir_on_another_filesystem(tmp_path: Path) -> None:
    """The temporary file sits beside the target (never in $TMPDIR): a kill leaves the old file whole."""
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, target)
    other_fs = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path / "elsewhere"
    tmpdir = other_fs / f"fss_test_tmp_{os.getpid()}"
    tmpdir.mkdir(parents=True, exist_ok=True)
    script = (
        "import io, os, signal, sys, torch\n"
        "from fss.atomic import AtomicCheckpointIO\n"
        "real = torch.save\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    buf = io.BytesIO(); real(obj, buf); data = buf.getvalue()\n"
        "    f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying_save\n"
        "big = {'state_dict': {'w': torch.randn(512, 512)}, 'epoch': 2}\n"
        "AtomicCheckpointIO().save_checkpoint(big, sys.argv[1])\n"
    )
    env = {
        **os.environ,
        "TMPDIR": str(tmpdir),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        killed = subprocess.run([sys.executable, "-c", script, str(target)], env=env, timeout=120)
        assert killed.returncode == -9
        assert list(tmpdir.iterdir()) == []  # nothing staged in $TMPDIR
    finally:
        tmpdir.rmdir()
    assert torch.load(target, weights_only=True)["epoch"] == 1  # the old file, whole
    (partial,) = target.parent.glob(".last.ckpt.*.partial")  # the killed writer's temporary file
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, target)
    assert not partial.exists() and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["epoch"] == 3


def test_corrupt_image_mid_epoch_then_fix_lists_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_fss1000(tmp_path / "data", n_classes=6, n_images=4)
    train_classes = sorted(p for p in root.iterdir() if p.is_dir())
    victims = [str(next(iter(sorted(c.glob("*.jpg"))))) for c in train_classes]
    truncate = {"class_path": "tests.faults.TruncateFilesAt", "init_args": {"epoch": 1, "paths": victims}}
    config = write_config(tmp_path / "fss.yaml", [truncate], root=str(root), num_workers=1, train_episodes=8)
    assert fit(config, tmp_path / "run", "--trainer.max_epochs", "2") == 1
    err = capsys.readouterr().err
    last = last_ckpt(tmp_path / "run")
    assert "Traceback" not in err and "Original Traceback" not in err, err
    assert "fss fit: error: cannot read image" in err and "truncated" in err.lower()
    assert "fss data check --config YOUR_CONFIG --fix-lists" in err
    assert f"{last} holds the run after 1 finished epoch(s)" in err
    assert data_main(["check", "--config", str(config), "--fix-lists"]) == 0
    out = capsys.readouterr().out
    assert "left out" in out and "OK (after leaving the broken files out)" in out
    clean = write_config(tmp_path / "clean.yaml", None, root=str(root), num_workers=1, train_episodes=8)
    assert fit(clean, tmp_path / "run", "--trainer.max_epochs", "2", "--ckpt_path", str(last)) is None
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 8)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("truncate", r"cannot load the checkpoint: the file is truncated"),
        (b"not a checkpoint at all", r"cannot load the checkpoint: not a readable PyTorch checkpoint"),
        ("weights", r"is not a Lightning checkpoint \(no 'state_dict'\); .*--model.pretrained"),
        (None, r"no such file"),
    ],
)
def test_bad_checkpoints_are_named_with_the_fix(
    content: object,
    expected: str,
    config: Path,
    reference_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.ckpt"
    if content == "truncate":  # a checkpoint cut in the middle (an interrupted copy)
        data = reference_root.joinpath("version_0", "checkpoints", "last.ckpt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif content == "weights":
        torch.save({"hsnet.weight": torch.ones(1)}, bad)
    elif content is not None:
        bad.write_bytes(content)
    assert (
        main(
            [
                "test",
                "--config",
                str(config),
                "--ckpt_path",
                str(bad),
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights_only" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("fss test: error:")]
    assert len(lines) == 1 and str(bad) in lines[0], err
    assert re.search(expected, lines[0]), lines[0]
