"""Deepglobe (PATNet protocol): layout, classes, episodes, PATNet's exact sequence, preparation, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fss.data.common import DatasetLayoutError
from fss.data.deepglobe import (
    CLASS_COLOURS,
    DeepglobeDataModule,
    DeepglobeDataset,
    colour_codes,
    keep_patch,
    prepare_deepglobe,
)
from fss.data.prepare import PrepareError
from fss.data.prepare import main as prepare_main
from tests.data.fixtures import make_deepglobe, make_deepglobe_download
from tests.data.target_checks import assert_episodes_valid, assert_test_only, assert_workers_do_not_matter

# PATNet's own DatasetDeepglobe (github slei109/PATNet, data/deepglobe.py, run outside this repo) on
# make_deepglobe(root) with num=12 after np.random.seed(0), as its test.py seeds: "query class supports".
PATNET_1SHOT = [
    "1/115_sat_24 0 1/101_sat_00", "2/116_sat_24 1 2/109_sat_15", "3/124_sat_33 2 3/131_sat_42",
    "4/118_sat_24 3 4/111_sat_15", "5/119_sat_24 4 5/105_sat_00", "6/106_sat_00 5 6/120_sat_24",
    "1/101_sat_00 0 1/108_sat_15", "2/102_sat_00 1 2/109_sat_15", "3/117_sat_24 2 3/124_sat_33",
    "4/118_sat_24 3 4/111_sat_15", "5/119_sat_24 4 5/105_sat_00", "6/106_sat_00 5 6/113_sat_15",
]  # fmt: skip
PATNET_5SHOT = [
    "1/115_sat_24 0 1/101_sat_00,1/122_sat_33,1/108_sat_15,1/108_sat_15,1/101_sat_00",
    "2/109_sat_15 1 2/102_sat_00,2/102_sat_00,2/116_sat_24,2/116_sat_24,2/116_sat_24",
    "3/124_sat_33 2 3/103_sat_00,3/131_sat_42,3/110_sat_15,3/103_sat_00,3/110_sat_15",
    "4/118_sat_24 3 4/111_sat_15,4/104_sat_00,4/111_sat_15,4/104_sat_00,4/104_sat_00",
    "5/105_sat_00 4 5/112_sat_15,5/112_sat_15,5/119_sat_24,5/126_sat_33,5/112_sat_15",
    "6/120_sat_24 5 6/113_sat_15,6/113_sat_15,6/106_sat_00,6/106_sat_00,6/106_sat_00",
    "1/115_sat_24 0 1/101_sat_00,1/108_sat_15,1/122_sat_33,1/101_sat_00,1/108_sat_15",
    "2/102_sat_00 1 2/109_sat_15,2/109_sat_15,2/116_sat_24,2/109_sat_15,2/116_sat_24",
    "3/110_sat_15 2 3/131_sat_42,3/131_sat_42,3/131_sat_42,3/124_sat_33,3/103_sat_00",
    "4/111_sat_15 3 4/104_sat_00,4/104_sat_00,4/118_sat_24,4/118_sat_24,4/118_sat_24",
    "5/119_sat_24 4 5/105_sat_00,5/126_sat_33,5/105_sat_00,5/126_sat_33,5/105_sat_00",
    "6/106_sat_00 5 6/113_sat_15,6/120_sat_24,6/120_sat_24,6/113_sat_15,6/113_sat_15",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_deepglobe(tmp_path_factory.mktemp("cdfss"))


def identities(ds: DeepglobeDataset) -> list[str]:
    return [f"{ds.item_name(q)} {c} {','.join(ds.item_name(s) for s in sup)}" for q, c, sup in ds.reference()]


def test_classes_layout_and_default_episode_count(root: Path) -> None:
    ds = DeepglobeDataset(root, "test", img_size=32)
    assert ds.class_names == ("agriculture", "urban", "rangeland", "forest", "water", "barren")
    assert ds.class_ids == [0, 1, 2, 3, 4, 5] and len(ds) == 600
    assert [len(ds.class_items[c]) for c in ds.class_ids] == [4, 3, 5, 3, 4, 3]  # Thumbs.db skipped
    assert (
        ds.item_files(("2", "102_sat_00"))[1]
        == root / "Deepglobe" / "2" / "test" / "groundtruth" / "102_sat_00.png"
    )
    # the folder itself works as the root too
    assert DeepglobeDataset(root / "Deepglobe", "val", img_size=32).root == root / "Deepglobe"


def test_episodes_are_balanced_binary_and_resized(root: Path) -> None:
    assert_episodes_valid(DeepglobeDataModule(root=str(root), img_size=32, shot=2), shot=2, img_size=32)
    episode = DeepglobeDataset(root, "test", img_size=32, use_original_imgsize=True).episode(1)
    stem = episode["query_name"].split("/")[1]
    h, w = Image.open(root / "Deepglobe" / "2" / "test" / "origin" / f"{stem}.jpg").size[::-1]
    assert tuple(episode["org_query_imsize"].tolist()) == (h, w)
    assert tuple(episode["org_query_mask"].shape) == (h, w)


def test_reference_order_is_patnets_sequence(root: Path) -> None:
    one = DeepglobeDataset(root, "test", num_episodes=12, episode_order="patnet", img_size=32)
    assert identities(one) == PATNET_1SHOT
    five = DeepglobeDataset(root, "test", shot=5, num_episodes=12, episode_order="patnet", img_size=32)
    assert identities(five) == PATNET_5SHOT  # repeated supports, as the reference draws them
    assert five.episode(4)["support_names"] == PATNET_5SHOT[4].split()[2].split(",")
    # another seed is another sequence; the independent order differs from the reference
    other = DeepglobeDataset(root, "test", num_episodes=12, episode_order="patnet", seed=1, img_size=32)
    assert identities(other) != PATNET_1SHOT
    independent = DeepglobeDataset(root, "test", num_episodes=12, img_size=32)
    assert [independent.episode(i)["query_name"] for i in range(12)] != [s.split()[0] for s in PATNET_1SHOT]


def test_episodes_do_not_depend_on_worker_count(root: Path) -> None:
    for order in ("fss", "patnet"):
        assert_workers_do_not_matter(
            lambda num_workers, order=order: DeepglobeDataModule(
                root=str(root),
                img_size=32,
                eval_batch_size=4,
                test_episodes=8,
                episode_order=order,
                num_workers=num_workers,
            )
        )


def test_test_only_and_data_check(root: Path) -> None:
    assert_test_only(DeepglobeDataModule(root=str(root), img_size=32))


def test_errors_name_the_path_and_show_the_layout(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"(?s)no Deepglobe folder.*fss data prepare deepglobe"):
        DeepglobeDataset(tmp_path, "test")
    # too few images for the shot: classes skipped with a warning, an error when none is left
    assert DeepglobeDataset(root, "test", shot=4).usable_class_ids == [2]
    with pytest.raises(ValueError, match="shot\\+1=6 images"):
        DeepglobeDataset(root, "test", shot=5)
    with pytest.raises(ValueError, match="episode_order"):
        DeepglobeDataModule(root=str(root), episode_order="hsnet")
    missing = make_deepglobe(tmp_path / "m", n_per_class=(3,) * 6)
    mask = next((missing / "Deepglobe" / "1" / "test" / "groundtruth").glob("*.png"))
    mask.unlink()
    from fss.data.check import DatasetCheckError, check_datamodule

    with pytest.raises(DatasetCheckError, match=f"missing file .*{mask.name}"):
        check_datamodule(DeepglobeDataModule(root=str(missing), img_size=32))


# ------------------------------------------------------------------------------------------ preparation
def digests(folder: Path) -> dict[str, tuple[str, float]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_filter_and_colour_codes_by_hand() -> None:
    codes = colour_codes(np.array([[[250, 5, 130], [10, 127, 128]]], dtype=np.uint8))
    assert codes.tolist() == [[0xFF00FF, 0x0000FF]]
    patch = np.zeros((10, 10), dtype=np.int32)
    assert not keep_patch(patch, 0.048)  # one colour
    patch[0, :4] = 1  # 4% < 4.8%
    assert not keep_patch(patch, 0.048)
    patch[1, :1] = 1  # 5%
    assert keep_patch(patch, 0.048)


def test_prepare_cuts_filters_and_sorts_without_touching_the_source(tmp_path: Path) -> None:
    src = make_deepglobe_download(tmp_path / "download", n_tiles=3, size=60)
    for p in src.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = digests(src)
    dst = tmp_path / "cdfss"
    counts = prepare_deepglobe(src, dst, grid=3, min_fraction=0.01)
    assert digests(src) == before
    assert counts["tiles"] == 3 and counts["patches"] > 0
    # by hand: every kept patch's per-class masks agree with the thresholded colour mask
    for k, colour in enumerate(CLASS_COLOURS, start=1):
        for png in (dst / "Deepglobe" / str(k) / "test" / "groundtruth").glob("*.png"):
            tile, i, j = png.stem.rsplit("_", 1)[0], int(png.stem[-2]), int(png.stem[-1])
            rgb = np.asarray(
                Image.open(src / "train" / f"{tile.replace('_sat', '')}_mask.png").convert("RGB")
            )
            codes = colour_codes(rgb)[i * 20 : (i + 1) * 20, j * 20 : (j + 1) * 20]
            expected = codes == ((colour[0] << 16) | (colour[1] << 8) | colour[2])
            assert np.array_equal(np.asarray(Image.open(png)) == 255, expected)
            assert keep_patch(codes, 0.01)
            assert Image.open(png.parents[1] / "origin" / f"{png.stem}.jpg").size == (20, 20)
    ds = DeepglobeDataset(dst, "test", shot=1, img_size=32)
    assert ds.episode(0)["query_mask"].sum() > 0
    for p in src.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_prepare_resumes_and_refuses_to_write_into_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_deepglobe_download(tmp_path / "download", n_tiles=3, size=36)
    dst = tmp_path / "cdfss"
    assert prepare_main(["deepglobe", "--src", str(src), "--dst", str(dst), "--grid", "2"]) == 0
    first = digests(dst / "Deepglobe")
    # an interruption after the first tile: its marker stays, the others are redone
    state = dst / ".fss_prepare" / "deepglobe"
    for marker in sorted(state.iterdir())[1:]:
        marker.unlink()
    assert prepare_main(["deepglobe", "--src", str(src), "--dst", str(dst), "--grid", "2"]) == 0
    out = capsys.readouterr()
    assert "1 of 3 already done (resuming)" in out.out and "deepglobe tiles" in out.err  # the progress bar
    assert {k: v[0] for k, v in digests(dst / "Deepglobe").items()} == {k: v[0] for k, v in first.items()}
    assert not list(dst.rglob(".*.tmp*"))  # no temporary file left behind
    assert first  # some patches were written
    from fss.cli import main as fss_main  # the same command through `fss data prepare`

    assert fss_main(["data", "prepare", "deepglobe", "--src", str(src), "--dst", str(src / "out")]) == 1
    assert "lies in --src" in capsys.readouterr().err
    with pytest.raises(PrepareError, match="no <id>_sat.jpg tiles"):
        prepare_deepglobe(tmp_path / "cdfss", tmp_path / "elsewhere")
