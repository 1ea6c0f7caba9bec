"""``fss crossdomain``: a tiny real run (synthetic source, in-domain + twin targets, 2 shots, 2 seeds)."""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

import pytest
import yaml

from fss import crossdomain
from fss.cli import main as fss_main
from fss.crossdomain import CrossDomain, CrossDomainConfigError
from fss.data.check import load_datamodule
from fss.data.synthetic import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
TINY = [
    "--data.init_args.img_size", "64",
    "--data.init_args.batch_size", "2",
    "--data.init_args.train_episodes", "2",
    "--data.init_args.val_episodes", "2",
    "--trainer.max_epochs", "1",
    "--trainer.accelerator", "cpu",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.logger", "false",
    "--trainer.callbacks", "[]",
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the demo model after one tiny epoch."""
    root = tmp_path_factory.mktemp("source")
    argv = sys.argv
    sys.argv = ["fss"]
    try:
        fss_main(["fit", "--config", str(DEMO), *TINY, "--trainer.default_root_dir", str(root)])
    finally:
        sys.argv = argv
    (ckpt,) = (root / "checkpoints").glob("best-*.ckpt")
    return ckpt


def write_config(directory: Path) -> Path:
    target = {"fold": 0, "img_size": 64, "eval_batch_size": 2, "test_episodes": 4}
    config = {
        "name": "tiny-hm",
        "source": str(DEMO),
        "output_dir": str(directory / "out"),
        "shots": [1, 2],
        "seeds": [0, 1],
        "overrides": {"trainer.accelerator": "cpu", "trainer.enable_progress_bar": False},
        "wandb": {"project": "fss-test", "offline": True},
        "targets": {
            "in-domain": {"class_path": "fss.data.SyntheticDataModule", "init_args": target},
            "grey": {
                "class_path": "fss.data.SyntheticShiftDataModule",
                "init_args": {"domain": "greyscale", **target},
            },
        },
    }
    path = directory / "cd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cd")
    config = write_config(directory)
    argv = sys.argv
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        try:
            code = crossdomain.main(
                ["--config", str(config), "--ckpt_path", str(checkpoint), "--launcher", "inprocess"]
            )
        finally:
            sys.argv = argv
    assert code == 0
    return directory


@pytest.mark.slow
def test_every_target_shot_and_seed_is_tested(tiny: Path) -> None:
    out = tiny / "out"
    results = rows(out / "results.csv")
    assert [(r["target"], r["shot"], r["seed"]) for r in results] == [
        (t, k, s) for t in ("in-domain", "grey") for k in ("1", "2") for s in ("0", "1")
    ]
    run = out / "runs" / "grey" / "2shot-seed1"
    data = yaml.safe_load((run / "test_config.yaml").read_text())["data"]
    assert data["class_path"] == "fss.data.SyntheticShiftDataModule"
    assert (data["init_args"]["shot"], data["init_args"]["seed"], data["init_args"]["domain"]) == (
        2,
        1,
        "greyscale",
    )
    assert (run / "test" / "metrics.csv").is_file()
    # the two seeds draw different episodes
    assert results[0]["miou"] != results[1]["miou"] or results[0]["fbiou"] != results[1]["fbiou"]
    per_class = rows(out / "per_class_iou.csv")
    assert {r["class"] for r in per_class if r["target"] == "grey"} <= set(CLASS_NAMES[:12])  # fold 0
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run"


@pytest.mark.slow
def test_table_cells_and_mean_by_hand(tiny: Path) -> None:
    out = tiny / "out"
    results = rows(out / "results.csv")
    table = (out / "crossdomain.md").read_text()
    assert "| method | shot | in-domain | grey | Mean |" in table
    for shot in ("1", "2"):
        cells = []
        for target in ("in-domain", "grey"):
            values = [float(r["miou"]) for r in results if r["target"] == target and r["shot"] == shot]
            cells.append(f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}")
        means = [
            statistics.fmean(float(r["miou"]) for r in results if r["shot"] == shot and r["seed"] == seed)
            for seed in ("0", "1")
        ]
        cells.append(f"{statistics.fmean(means):.1f} ± {statistics.stdev(means):.1f}")
        assert f"| tiny-hm | {shot} | " + " | ".join(cells) + " |" in table
    assert "## grey: IoU per class (%)" in table and "| class | 1-shot | 2-shot |" in table


@pytest.mark.slow
def test_a_second_run_skips_finished_runs(
    tiny: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny / "cd.yaml"
    assert (
        crossdomain.main(
            ["--config", str(config), "--ckpt_path", str(checkpoint), "--no-wandb", "--launcher", "inprocess"]
        )
        == 0
    )
    assert capsys.readouterr().out.count("done (skipped)") == 8


def test_config_errors_name_the_file_and_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: nowhere.yaml\ntargets: {a: {class_path: fss.data.SyntheticDataModule}}\n")
    with pytest.raises(CrossDomainConfigError, match="nowhere.yaml` not found"):
        CrossDomain.from_file(bad)
    bad.write_text(f"source: {DEMO}\ntarget: {{}}\n")
    with pytest.raises(CrossDomainConfigError, match=r"unknown option\(s\) \['target'\]"):
        CrossDomain.from_file(bad)
    bad.write_text(
        f"source: {DEMO}\ntargets: {{a: {{class_path: fss.data.SyntheticDataModule}}}}\nshots: [one]\n"
    )
    assert crossdomain.main(["--config", str(bad)]) == 2
    assert "`shots:` must be a list" in capsys.readouterr().err
    bad.write_text(f"source: {DEMO}\ntargets: {{a: {{class_path: fss.data.SyntheticDataModule}}}}\n")
    assert crossdomain.main(["--config", str(bad), "--ckpt_path", str(tmp_path / "none.ckpt")]) == 2
    assert "is not a file" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("crossdomain*.yaml")))
def test_shipped_configs_build_every_target(config: str, tmp_path: Path) -> None:
    cd = CrossDomain.from_file(REPO / "configs" / config, output_dir=str(tmp_path))
    assert cd.source.is_file() and cd.shots == [1, 5]
    for target in cd.targets:
        test_config = cd.test_config(target, 5, cd.seeds[0])
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump(test_config))
        dm = load_datamodule(path)  # parses and instantiates the data module (no files are read)
        assert dm.shot == 5 and dm.img_size == (96 if "synthetic" in config else 400)
        assert target == "FSS-1000" or target.startswith("synthetic") or dm.train_class_ids == []
