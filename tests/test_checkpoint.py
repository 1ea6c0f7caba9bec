"""A checkpoint and the command line: which wins, and what the user is told (fss/checkpoint.py).

The rule: an option the config/command line leaves out comes from the checkpoint; a network option
set to something else than the checkpoint's is an error naming both values; a run setting (lr,
k-shot rule, ...) set explicitly wins, with a warning.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import Namespace

from fss.backbones import ResNet
from fss.checkpoint import CheckpointError, differences, reconcile_hparams
from fss.cli import explicit_model_options, main
from fss.task import FewShotSegmentationTask

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
TINY = [
    "--data.init_args.img_size", "32", "--data.init_args.test_episodes", "2",
    "--data.init_args.batch_size", "2", "--trainer.accelerator", "cpu", "--trainer.logger", "true",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]  # fmt: skip
RUN_SETTINGS = FewShotSegmentationTask.RUN_SETTINGS


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fss"])


def _checkpoint(path: Path, **hparams: object) -> Path:
    """A Lightning-format checkpoint of the task built with ``hparams`` (random ResNet-18)."""
    pl.seed_everything(0)
    task = FewShotSegmentationTask(backbone=ResNet("resnet18", weights=None), num_classes=48, **hparams)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": pl.__version__}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def hm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "hsnet_hm.ckpt", net="hsnet", masking="hm")


def test_a_network_option_that_differs_from_the_checkpoint_is_an_error(
    hm_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: ``--model.masking fm`` with an HM checkpoint silently ran HM."""
    code = main(["test", "--config", DEMO, *TINY, "--model.masking", "fm", "--ckpt_path", str(hm_ckpt),
                 "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"--ckpt_path {hm_ckpt} holds another network than the config asks for:" in err
    assert "model.masking: checkpoint 'hm', config/command line 'fm'" in err
    assert "Drop these options" in err


def test_an_asnet_checkpoint_with_an_hsnet_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asnet = _checkpoint(tmp_path / "asnet.ckpt", net="asnet", masking="fm")
    code = main(["test", "--config", DEMO, *TINY, "--ckpt_path", str(asnet),
                 "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert (
        "model.net.class_path: checkpoint 'fss.models.ASNet', config/command line 'fss.models.HSNet'" in err
    )
    assert "model.masking: checkpoint 'fm', config/command line 'hm'" in err  # demo.yaml says hm


def test_options_left_out_come_from_the_checkpoint_and_run_settings_win(
    hm_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(Path(DEMO).read_text())
    config["model"] = {"kshot_rule": "vote"}  # no network options at all
    path = tmp_path / "no_model.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.warns(
        UserWarning,
        match=r"model.kshot_rule: using 'mean' from the config/command line \(the checkpoint has 'vote'\)",
    ):
        code = main(["test", "--config", str(path), *TINY, "--model.kshot_rule", "mean",
                     "--ckpt_path", str(hm_ckpt), "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert code is None, capsys.readouterr().err
    (saved,) = tmp_path.glob("version_*/config.yaml")
    model = yaml.safe_load(saved.read_text())["model"]
    # the checkpoint's, in the class form it stores
    assert model["net"]["class_path"] == "fss.models.HSNet"
    assert model["backbone"]["init_args"]["name"] == "resnet18"
    assert model["masking"] == "hm"
    assert model["kshot_rule"] == "mean"  # the command line's


def test_reconcile_compares_nested_options_key_by_key() -> None:
    """Typed network objects (class_path + init_args) are compared leaf by leaf and reported by key."""
    ckpt = {"masking": {"class_path": "fss.masking.Hybrid", "init_args": {"alpha": 1.0}}, "lr": 1e-3}
    config = Namespace(
        masking=Namespace(class_path="fss.masking.Hybrid", init_args=Namespace(alpha=0.5)), lr=1e-3
    )
    with pytest.raises(
        CheckpointError, match=r"model.masking.init_args.alpha: checkpoint 1.0, config/command line 0.5"
    ):
        reconcile_hparams(ckpt, config, explicit={"masking"}, run_settings=RUN_SETTINGS, ckpt_path="x.ckpt")
    # not set explicitly: the checkpoint's value is applied, no error
    assert reconcile_hparams(ckpt, config, explicit=set(), run_settings=RUN_SETTINGS, ckpt_path="x") == ckpt


def test_a_name_and_its_class_form_are_the_same_network(hm_ckpt: Path, tmp_path: Path) -> None:
    """The checkpoint stores the class form; a config naming the same parts (or the class form with
    other weights, which a checkpoint replaces) is no conflict."""
    config = tmp_path / "named.yaml"
    demo = yaml.safe_load(Path(DEMO).read_text())
    demo["model"].update(net="hsnet", masking={"class_path": "fss.masking.HybridMasking"})
    demo["model"]["backbone"]["init_args"]["weights"] = "imagenet"  # never fetched with --ckpt_path
    config.write_text(yaml.safe_dump(demo))
    code = main(["test", "--config", str(config), *TINY, "--ckpt_path", str(hm_ckpt),
                 "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert code is None
    assert differences("m", {"a": 1, "b": [1, 2]}, Namespace(a=1, b=[1, 2])) == []


def test_explicit_model_options_reads_config_files_and_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n  net: hsnet\n  lr: 0.001\n  backbone:\n    class_path: fss.backbones.ResNet\n"
        "    init_args: {name: resnet18}\ndata: {}\ntest:\n  model: {kshot_rule: vote}\n"
    )
    argv = [
        "--config",
        str(config),
        "--model.masking",
        "fm",
        '--model.net_options={"a": 1}',
        "--data.fold",
        "1",
        "--model.net.feature_size",
        "8",
        "--model.backbone.init_args.weights=null",
    ]
    assert explicit_model_options(argv, "test") == {
        "net.class_path",  # a name states the class, not the defaults of its arguments
        "net.init_args.feature_size",  # --model.net.X is --model.net.init_args.X
        "lr",
        "backbone.class_path",
        "backbone.init_args.name",
        "backbone.init_args.weights",
        "masking.class_path",
        "net_options.a",
        "kshot_rule",  # the subcommand's own section
    }
    assert explicit_model_options(argv, "fit") - explicit_model_options(argv, "test") == set()
    assert "kshot_rule" not in explicit_model_options(argv, "fit")
    # a registered name fixes some arguments: those are stated too
    assert explicit_model_options(["--model", '{"backbone": "dilated_resnet50"}'], "fit") >= {
        "backbone.class_path"
    }
    # a path value is not read as a file; an option without a value does not swallow the next one
    assert explicit_model_options(["--model.net.base_learner", str(config), "--model.lr=1"], "fit") == {
        "net.init_args.base_learner",
        "lr",
    }


def test_only_the_written_leaves_of_a_part_are_compared() -> None:
    """``--model.net BAM`` against a BAM checkpoint whose derived num_base_classes is 36: no conflict,
    the checkpoint's options are applied; ``--model.net.init_args.shots 5`` against a 1-shot one is."""
    ckpt = {
        "net": {"class_path": "fss.models.BAM", "init_args": {"num_base_classes": 36, "shots": 1}},
        "lr": 1e-3,
    }
    config = Namespace(
        net=Namespace(class_path="fss.models.BAM", init_args=Namespace(num_base_classes=15, shots=1)),
        lr=5e-3,
    )
    with pytest.warns(UserWarning, match=r"model.lr: using 0.005 from the config/command line"):
        applied = reconcile_hparams(
            ckpt, config, explicit={"net.class_path", "lr"}, run_settings=RUN_SETTINGS, ckpt_path="x.ckpt"
        )
    assert applied == {"net": ckpt["net"]}  # lr is a run setting the command line set: it wins
    config.net.init_args.shots = 5
    with pytest.raises(
        CheckpointError, match=r"model.net.init_args.shots: checkpoint 1, config/command line 5"
    ):
        reconcile_hparams(
            ckpt, config, explicit={"net.class_path", "net.init_args.shots"}, run_settings=(), ckpt_path="x"
        )
    config.net.class_path = "fss.models.NTRENet"
    with pytest.raises(CheckpointError) as err:
        reconcile_hparams(ckpt, config, explicit={"net.class_path"}, run_settings=(), ckpt_path="x")
    assert (
        "model.net.class_path: checkpoint 'fss.models.BAM', config/command line 'fss.models.NTRENet'"
        in str(err.value)
    )
    assert "num_base_classes" not in str(err.value)  # not written: not compared
