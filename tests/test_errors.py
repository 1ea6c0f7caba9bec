"""Errors end in one clear message (option or path, what was expected, the fix), not a stack trace.

Through the real CLI (``fss.cli.main``, which the ``fss`` command runs): bad values, unknown names,
missing roots and abbreviated options give one or two lines on stderr and a non-zero status;
``FSS_DEBUG=1`` gives the stack trace back. Then the helpers of ``fss/errors.py`` on their own.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fss.atomic import AtomicWriteError, atomic_write
from fss.cli import main
from fss.data.sampling import split_code
from fss.errors import condense_parser_error, user_message

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
PASCAL = str(REPO / "configs" / "pascal_hsnet_hm.yaml")


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fss"])
    monkeypatch.delenv("FSS_DEBUG", raising=False)


CASES = [
    # (arguments after the config, exit status, what the first line says)
    (["--data.init_args.shot", "abc"], 2, "fss fit: error: data.shot (fss.data.SyntheticDataModule): Expected a <class 'int'>. Got value: abc"),
    (["--data.init_args.shot", "0"], 1, "fss fit: error: SyntheticDataModule: data.shot must be >= 1, got 0"),
    (["--data.init_args.fold", "9"], 1, "fss fit: error: SyntheticDataModule: data.fold must be in [0, 4), got 9"),
    (["--data.init_args.img_size", "0"], 1, "fss fit: error: SyntheticDataModule: data.img_size must be at least"),
    (["--model.masking", "xx"], 2, "fss fit: error: model.masking: unknown name 'xx': choose one of fm, im, hm,"),
    (["--model.net", "xx"], 2, "fss fit: error: model.net: unknown name 'xx': choose one of hsnet, asnet, vat"),
    (["--model.backbone", "xx"], 2, "fss fit: error: model.backbone: unknown name 'xx': choose one of resnet18,"),
    # no abbreviations: a prefix of an option is not that option
    (["--model.maskin", "fm"], 2, "fss fit: error: unrecognized arguments: --model.maskin fm"),
    (["--trainer.max_ep", "1"], 2, "fss fit: error: unrecognized arguments: --trainer.max_ep 1"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "status", "first_line"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_options_give_one_clear_message(
    args: list[str], status: int, first_line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["fit", "--config", DEMO, *args, "--trainer.default_root_dir", str(tmp_path)])
    except SystemExit as exit_info:  # parser errors exit, as argparse does
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    lines = [
        line for line in err.splitlines() if line.strip() and "Warning" not in line and "warn" not in line
    ]
    assert lines[0].startswith(first_line), err
    assert len(lines) <= 2, err


def test_missing_dataset_root_names_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fit", "--config", PASCAL, "--data.init_args.root", str(tmp_path / "nowhere"),
                 "--model.backbone.weights", "null", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"fss fit: error: PASCAL-5i root {tmp_path / 'nowhere'} does not exist. Expected layout:" in err
    assert "No epoch had finished" not in err  # nothing to resume: no hint about it


def test_fss_debug_keeps_the_stack_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSS_DEBUG", "1")
    with pytest.raises(ValueError, match="data.shot must be >= 1"):
        main(
            [
                "fit",
                "--config",
                DEMO,
                "--data.init_args.shot",
                "0",
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )


def test_empty_query_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "queries").mkdir()
    (tmp_path / "supports").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "supports" / "a.jpg")
    Image.fromarray(np.eye(20, dtype=np.uint8) * 255).save(tmp_path / "supports" / "a.png")
    code = main(["predict", "--config", str(REPO / "configs" / "predict.yaml"),
                 "--data.init_args.support_dir", str(tmp_path / "supports"),
                 "--data.init_args.query_dir", str(tmp_path / "queries"),
                 "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"fss predict: error: no query images found in {tmp_path / 'queries'}" in err


# ------------------------------------------------------------------------------------------ helpers
def test_condense_parser_error() -> None:
    message = (
        'Parser key "data":\n'
        "  Does not validate against any of the Union subtypes\n"
        "  Subtypes: [<class 'LightningDataModule'>, <class 'NoneType'>]\n"
        "  Errors:\n"
        "    - Problem with given class_path 'fss.data.SyntheticDataModule':\n"
        '        Parser key "fold":\n'
        "          Expected a <class 'int'>. Got value: x\n"
        "    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        "  Given value: NestedArg(key='fold', val='x')"
    )
    assert condense_parser_error(message) == (
        "data.fold (fss.data.SyntheticDataModule): Expected a <class 'int'>. Got value: x"
    )
    assert condense_parser_error("unrecognized arguments: --x 1") == "unrecognized arguments: --x 1"


def test_user_message_picks_the_message_the_user_needs(tmp_path: Path) -> None:
    # fss wrapped a lower error: fss's message
    with pytest.raises(AtomicWriteError) as info, atomic_write(tmp_path / "x.bin") as f:
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    target = tmp_path / "x.bin"
    assert (
        user_message(info.value) == f"cannot write {target}: no space left on the device; nothing was written"
    )
    # a library wrapped fss's error (jsonargparse around a data module's check): fss's message
    try:
        try:
            split_code("trn")  # raises a ValueError in fss
        except ValueError as inner:
            raise RuntimeError("Problem with given class_path: ... a long parser message ...") from inner
    except RuntimeError as err:
        assert user_message(err) == "unknown split 'trn': use one of train, val, test"
    # a DataLoader worker re-raises the error with its traceback in the text: only the message
    worker = (
        "Caught DatasetFileError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise OSError("broken data stream")\nOSError: broken data stream\n\n'
        "The above exception was the direct cause of the following exception:\n\n"
        'Traceback (most recent call last):\n  File "common.py", line 70, in read_image\n'
        "fss.data.common.DatasetFileError: cannot read image /d/a.jpg: broken data stream (fix it)"
    )
    assert (
        user_message(FileNotFoundError(worker)) == "cannot read image /d/a.jpg: broken data stream (fix it)"
    )
    # a bug keeps its stack trace
    assert user_message(KeyError("state_dict")) is None
    assert user_message(ZeroDivisionError()) is None
