"""Checks every test-only cross-domain target must pass, shared by their test files."""

from __future__ import annotations

import pytest
import torch

from fss.data.check import check_datamodule
from fss.data.episode import check_episode
from fss.data.target import TargetDataModule


def assert_episodes_valid(dm: TargetDataModule, shot: int, img_size: int, n: int = 6) -> None:
    """The first ``n`` test episodes are well formed, show class ``class_ids[i % C]``, and have supports
    other than the query (distinct from each other in the independent order)."""
    dm.setup("test")
    ds = dm.datasets["test"]
    for i in range(n):
        episode = ds.episode(i)
        check_episode(episode, shot=shot, img_size=img_size)
        assert int(episode["class_id"]) == ds.usable_class_ids[i % len(ds.usable_class_ids)]
        assert episode["query_name"] not in episode["support_names"]
        assert len(set(episode["support_names"])) == shot
        assert set(episode["query_mask"].unique().tolist()) <= {0, 1}


def assert_workers_do_not_matter(make_dm) -> None:  # noqa: ANN001 - a factory of data modules
    """Test batches are identical with 0 and 2 dataloader workers."""

    def batches(num_workers: int) -> list[dict]:
        dm = make_dm(num_workers=num_workers)
        dm.setup("test")
        return list(dm.test_dataloader())

    a, b = batches(0), batches(2)
    assert [x["query_name"] for x in a] == [x["query_name"] for x in b]
    assert [x["support_names"] for x in a] == [x["support_names"] for x in b]
    assert all(torch.equal(x["query_img"], y["query_img"]) for x, y in zip(a, b))
    assert all(torch.equal(x["support_masks"], y["support_masks"]) for x, y in zip(a, b))


def assert_test_only(dm: TargetDataModule) -> None:
    """No training split (an error that says to train on a source), and ``fss data check`` checks test only."""
    with pytest.raises(ValueError, match="test-only cross-domain target"):
        dm.build_dataset("train")
    assert dm.train_class_ids == []
    report = check_datamodule(dm)
    assert "fold 0: test:" in report and "train" not in report and report.endswith("OK")
