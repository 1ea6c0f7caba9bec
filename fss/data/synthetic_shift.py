"""The synthetic benchmark's cross-domain twin: its held-out classes under other appearance statistics.

A test-only target that runs anywhere in seconds, so the whole cross-domain path (train on the
synthetic source, ``fss crossdomain`` on targets, the table) can be tried on a fresh machine. Scenes
and classes are those of :mod:`fss.data.synthetic` (the held-out fold's 12 classes); after rendering,
every image of an episode is restyled into another *domain*, with per-image strengths drawn from the
episode generator:

* ``greyscale``: luminance only, with a random gamma and contrast (an X-ray-like modality: no colour,
  so the patterns' colours no longer tell classes apart);
* ``underwater``: red absorbed (a blue-green cast) and a veil of haze towards a blue-green colour,
  lowering contrast (SUIM-like);
* ``negative``: every channel inverted (other colours and brightness order, same shapes and textures).

Masks are unchanged. Train on ``SyntheticDataModule`` (same fold) and test here; the gap to the
in-domain test of the same fold is the domain shift.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from fss.data.synthetic import SyntheticDataModule, SyntheticFSS

Domain = Literal["greyscale", "underwater", "negative"]
DOMAINS: tuple[str, ...] = ("greyscale", "underwater", "negative")
#: ITU-R BT.601 luma weights
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)


def restyle(rng: np.random.Generator, imgs: np.ndarray, domain: str) -> None:
    """Restyle images float32 [N, 3, S, S] in [0, 1] into ``domain``, in place (see the module docstring)."""
    n = imgs.shape[0]
    if domain == "greyscale":
        grey = (imgs * LUMA).sum(axis=1, keepdims=True)  # [N, 1, S, S]
        gamma = rng.uniform(0.7, 1.4, size=(n, 1, 1, 1)).astype(np.float32)
        contrast = rng.uniform(0.7, 1.2, size=(n, 1, 1, 1)).astype(np.float32)
        grey = np.clip((grey**gamma - 0.5) * contrast + 0.5, 0.0, 1.0)
        imgs[:] = grey
    elif domain == "underwater":
        absorb = np.stack(
            [rng.uniform(0.2, 0.45, n), rng.uniform(0.75, 0.95, n), rng.uniform(0.9, 1.0, n)], axis=1
        ).astype(np.float32)[:, :, None, None]
        veil = np.stack(
            [rng.uniform(0.0, 0.1, n), rng.uniform(0.35, 0.55, n), rng.uniform(0.45, 0.7, n)], axis=1
        ).astype(np.float32)[:, :, None, None]
        haze = rng.uniform(0.3, 0.5, size=(n, 1, 1, 1)).astype(np.float32)
        imgs *= absorb
        imgs += haze * (veil - imgs)
    elif domain == "negative":
        np.subtract(1.0, imgs, out=imgs)
    else:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")


class SyntheticShiftFSS(SyntheticFSS):
    """Test episodes of the synthetic held-out classes restyled into ``domain`` (see the module docstring).

    Args:
        domain: ``greyscale``, ``underwater`` or ``negative``.
        split, fold and the rest: see :class:`~fss.data.synthetic.SyntheticFSS` (``split`` must not be
            ``train``: a cross-domain target is test-only).
    """

    def __init__(self, split: str, domain: Domain = "greyscale", **kwargs: Any) -> None:
        if split == "train":
            raise ValueError(
                "SyntheticShiftFSS is a test-only cross-domain target: train on fss.data.SyntheticDataModule"
            )
        if domain not in DOMAINS:
            raise ValueError(f"SyntheticShiftFSS: domain must be one of {DOMAINS}, got {domain!r}")
        super().__init__(split, **kwargs)
        self.domain = domain

    def restyle(self, rng: np.random.Generator, imgs: np.ndarray) -> None:
        restyle(rng, imgs, self.domain)


class SyntheticShiftDataModule(SyntheticDataModule):
    """The synthetic cross-domain twin: the held-out fold's classes in another ``domain``, test-only.

    Args:
        domain: ``greyscale`` (X-ray-like), ``underwater`` (colour cast and haze) or ``negative``.
        **kwargs: the options of :class:`~fss.data.synthetic.SyntheticDataModule`.
    """

    dataset_class = SyntheticShiftFSS
    #: no training split
    test_only: ClassVar[bool] = True

    def __init__(self, domain: Domain = "greyscale", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if domain not in DOMAINS:
            raise ValueError(
                f"SyntheticShiftDataModule: data.domain must be one of {DOMAINS}, got {domain!r}"
            )
        self.domain = domain

    @property
    def train_class_ids(self) -> list[int]:
        return []

    def dataset_kwargs(self) -> dict[str, Any]:
        return {**super().dataset_kwargs(), "domain": self.domain}
