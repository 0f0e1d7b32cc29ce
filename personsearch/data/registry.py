"""Load a dataset or search protocol by name: the one place that maps names to readers.

Scene datasets: "cuhk-sysu" (also the synthetic world, written in CUHK-SYSU's layout) and "prw".
Crop datasets (re-id only): "market1501", "cuhk03" (variant "labeled" or "detected").
Classification datasets: "cifar100" (the binary release).
"""

from __future__ import annotations

import os

from personsearch.data.cifar100 import Cifar100, load_cifar100
from personsearch.data.cuhk03 import load_cuhk03
from personsearch.data.cuhk_sysu import load_cuhk_sysu, load_cuhk_sysu_protocol
from personsearch.data.market1501 import load_market1501
from personsearch.data.prw import load_prw, load_prw_protocol
from personsearch.data.scenes import CropDataset, SceneDataset, SearchProtocol
from personsearch.errors import ConfigError

SCENE_DATASETS = ("cuhk-sysu", "prw")
CROP_DATASETS = ("market1501", "cuhk03")
CLASSIFY_DATASETS = ("cifar100",)


def load_scene_dataset(name: str, root: str | os.PathLike[str]) -> SceneDataset:
    """Read a person-search dataset's training and test scenes."""
    if name == "cuhk-sysu":
        return load_cuhk_sysu(root)
    if name == "prw":
        return load_prw(root)
    raise ConfigError(_unknown(name, SCENE_DATASETS))


def load_search_protocol(
    name: str,
    root: str | os.PathLike[str],
    gallery_size: int | str = 100,
    cross_camera: bool = False,
) -> SearchProtocol:
    """Read a dataset's search protocol.

    `gallery_size` (50 ... 4000 or "full") applies to CUHK-SYSU, `cross_camera` to PRW.
    """
    if name == "cuhk-sysu":
        if cross_camera:
            raise ConfigError("cross_camera applies to PRW only; CUHK-SYSU has no cameras")
        return load_cuhk_sysu_protocol(root, gallery_size)
    if name == "prw":
        return load_prw_protocol(root, cross_camera=cross_camera)
    raise ConfigError(_unknown(name, SCENE_DATASETS))


def load_crop_dataset(
    name: str, root: str | os.PathLike[str], variant: str | None = None
) -> CropDataset:
    """Read a re-id dataset of person crops; `variant` (CUHK03 only): labeled or detected."""
    if name == "cuhk03":
        return load_cuhk03(root, variant)
    if variant:
        raise ConfigError(f"a variant applies to cuhk03 only, not to {name} (got {variant!r})")
    if name == "market1501":
        return load_market1501(root)
    raise ConfigError(_unknown(name, CROP_DATASETS))


def load_classify_dataset(name: str, root: str | os.PathLike[str]) -> Cifar100:
    """Read an image classification dataset (its training and test splits)."""
    if name == "cifar100":
        return load_cifar100(root)
    raise ConfigError(_unknown(name, CLASSIFY_DATASETS))


def _unknown(name: str, choices: tuple[str, ...]) -> str:
    return f"unknown dataset {name!r}: choose one of {', '.join(choices)}"
