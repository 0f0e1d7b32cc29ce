"""Load a dataset or search protocol by name: the one place that maps names to readers.

`DATASET_SPECS` is the one table of dataset names: each name's kind (scene, crop or classify),
the training tasks that take it, and, for the synthetic world, the dataset whose layout and
reader it shares (it is written in CUHK-SYSU's layout and read as CUHK-SYSU). Every other list
of names (the training tasks', `personsearch check-data`'s choices) is read from it.

Scene datasets: "cuhk-sysu" (also the synthetic world) and "prw".
Crop datasets (re-id only): "market1501", "cuhk03" (variant "labeled" or "detected").
Classification datasets: "cifar100" (the binary release).

The readers are imported by the functions that call them: the CLI builds its parsers from this
table at start-up, before numpy is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from personsearch.errors import ConfigError

if TYPE_CHECKING:
    from personsearch.data.cifar100 import Cifar100
    from personsearch.data.scenes import CropDataset, SceneDataset, SearchProtocol

DatasetKind = Literal["scene", "crop", "classify"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset name stands for."""

    kind: DatasetKind
    #: the training tasks ("reid", "detector", "classify") that take the dataset
    tasks: tuple[str, ...]
    #: the dataset whose layout and reader this one shares (None: its own)
    reads_as: str | None = None
    #: generated on first use into data.root (the synthetic world)
    generated: bool = False


DATASET_SPECS = {
    "cuhk-sysu": DatasetSpec("scene", ("reid", "detector")),
    "prw": DatasetSpec("scene", ("reid", "detector")),
    "market1501": DatasetSpec("crop", ("reid",)),
    "cuhk03": DatasetSpec("crop", ("reid",)),
    "cifar100": DatasetSpec("classify", ("classify",)),
    "synthetic": DatasetSpec("scene", ("reid", "detector"), reads_as="cuhk-sysu", generated=True),
}


def dataset_names(
    kind: DatasetKind | None = None, task: str | None = None, aliases: bool = True
) -> tuple[str, ...]:
    """The names of the table (in its order) of one kind and/or taken by one task; `aliases`
    False leaves out the names that read as another dataset."""
    return tuple(
        name
        for name, spec in DATASET_SPECS.items()
        if (kind is None or spec.kind == kind)
        and (task is None or task in spec.tasks)
        and (aliases or spec.reads_as is None)
    )


def reader_name(name: str) -> str:
    """The dataset whose reader reads `name` (the synthetic world: "cuhk-sysu")."""
    spec = DATASET_SPECS.get(name)
    return name if spec is None or spec.reads_as is None else spec.reads_as


#: The readers' names: the datasets with a reader of their own, by kind.
SCENE_DATASETS = dataset_names("scene", aliases=False)
CROP_DATASETS = dataset_names("crop", aliases=False)
CLASSIFY_DATASETS = dataset_names("classify", aliases=False)
#: Every dataset with a reader of its own (what `personsearch check-data` checks).
READER_DATASETS = dataset_names(aliases=False)


def load_scene_dataset(name: str, root: str | os.PathLike[str]) -> SceneDataset:
    """Read a person-search dataset's training and test scenes."""
    if name == "cuhk-sysu":
        from personsearch.data.cuhk_sysu import load_cuhk_sysu

        return load_cuhk_sysu(root)
    if name == "prw":
        from personsearch.data.prw import load_prw

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
        from personsearch.data.cuhk_sysu import load_cuhk_sysu_protocol

        if cross_camera:
            raise ConfigError("cross_camera applies to PRW only; CUHK-SYSU has no cameras")
        return load_cuhk_sysu_protocol(root, gallery_size)
    if name == "prw":
        from personsearch.data.prw import load_prw_protocol

        return load_prw_protocol(root, cross_camera=cross_camera)
    raise ConfigError(_unknown(name, SCENE_DATASETS))


def load_crop_dataset(
    name: str, root: str | os.PathLike[str], variant: str | None = None
) -> CropDataset:
    """Read a re-id dataset of person crops; `variant` (CUHK03 only): labeled or detected."""
    if name == "cuhk03":
        from personsearch.data.cuhk03 import load_cuhk03

        return load_cuhk03(root, variant)
    if variant:
        raise ConfigError(f"a variant applies to cuhk03 only, not to {name} (got {variant!r})")
    if name == "market1501":
        from personsearch.data.market1501 import load_market1501

        return load_market1501(root)
    raise ConfigError(_unknown(name, CROP_DATASETS))


def load_classify_dataset(name: str, root: str | os.PathLike[str]) -> Cifar100:
    """Read an image classification dataset (its training and test splits)."""
    if name == "cifar100":
        from personsearch.data.cifar100 import load_cifar100

        return load_cifar100(root)
    raise ConfigError(_unknown(name, CLASSIFY_DATASETS))


def _unknown(name: str, choices: tuple[str, ...]) -> str:
    return f"unknown dataset {name!r}: choose one of {', '.join(choices)}"
