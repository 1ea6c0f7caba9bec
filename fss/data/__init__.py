"""Episodic few-shot segmentation data: the episode schema, seeding, base classes and datasets.

Public classes are re-exported here so that configs can say ``class_path: fss.data.SyntheticDataModule``.
To add a dataset, import its module's public classes below and list them in ``__all__``.
"""

from fss.data.base import EpisodicDataModule, EpisodicDataset
from fss.data.coco import COCO20iDataModule, COCO20iDataset
from fss.data.deepglobe import DeepglobeDataModule, DeepglobeDataset
from fss.data.episode import Episode, EpisodeBatch, check_episode, collate_episodes
from fss.data.fss1000 import FSS1000DataModule, FSS1000Dataset
from fss.data.isic import ISICDataModule, ISICDataset
from fss.data.lung import LungDataModule, LungDataset
from fss.data.pascal import Pascal5iDataset, PascalDataModule
from fss.data.sampling import EpisodeSampler, episode_rng
from fss.data.suim import SUIMDataModule, SUIMDataset
from fss.data.synthetic import SyntheticDataModule, SyntheticFSS
from fss.data.synthetic_shift import SyntheticShiftDataModule, SyntheticShiftFSS
from fss.data.user import UserDataError, UserPredictDataModule

__all__ = [
    "COCO20iDataModule",
    "COCO20iDataset",
    "DeepglobeDataModule",
    "DeepglobeDataset",
    "FSS1000DataModule",
    "FSS1000Dataset",
    "ISICDataModule",
    "ISICDataset",
    "LungDataModule",
    "LungDataset",
    "Pascal5iDataset",
    "PascalDataModule",
    "Episode",
    "EpisodeBatch",
    "EpisodeSampler",
    "EpisodicDataModule",
    "EpisodicDataset",
    "SyntheticDataModule",
    "SyntheticFSS",
    "SyntheticShiftDataModule",
    "SyntheticShiftFSS",
    "SUIMDataModule",
    "SUIMDataset",
    "UserDataError",
    "UserPredictDataModule",
    "check_episode",
    "collate_episodes",
    "episode_rng",
]
