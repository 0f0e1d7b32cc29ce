"""CIFAR-100 (Krizhevsky 2009) from the binary release, for classification (paper's Table 8).

    cifar-100-binary/
      train.bin   50,000 records      test.bin   10,000 records
      fine_label_names.txt, coarse_label_names.txt   (optional here: class names)

A record is 3,074 bytes: the coarse label (1 byte, 0-19), the fine label (1 byte, 0-99), then
3,072 bytes of pixels: 1,024 red, 1,024 green, 1,024 blue, each 32 x 32 row-major. Top-1 is
scored on the fine labels. The Python release (pickled `train` / `test` files) is never read:
unpickling a file from a user's disk runs whatever code it holds.

`CifarImageDataset` gives normalised 3 x 32 x 32 tensors; training adds the standard CIFAR
augmentation of He et al. (2016): 4 pixels of zero padding on each side (zero after the per-
channel normalisation, i.e. the mean colour) and a random 32 x 32 crop, and a horizontal flip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personsearch.data.mat import require_file
from personsearch.errors import DatasetError

ROOT_HINT = "the unpacked CIFAR-100 binary release (cifar-100-binary/, holding train.bin, test.bin)"
SPLIT_FILES = {"train": "train.bin", "test": "test.bin"}
RELEASE_RECORDS = {"train": 50_000, "test": 10_000}
SIDE = 32
PIXEL_BYTES = 3 * SIDE * SIDE
RECORD_BYTES = 2 + PIXEL_BYTES
NUM_CLASSES = 100
NUM_COARSE = 20
NAME_FILES = {"fine": "fine_label_names.txt", "coarse": "coarse_label_names.txt"}
#: Per-channel mean and standard deviation of the training images (pixel values in [0, 1]).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
PADDING = 4
#: Files of the Python (pickle) release, recognised to say what to download instead.
PICKLE_FILES = ("train", "test", "meta")


@dataclass(frozen=True)
class CifarSplit:
    """The records of one .bin file: N x 32 x 32 x 3 uint8 images and their labels."""

    path: Path
    images: np.ndarray
    fine: np.ndarray  #: int64, 0-99
    coarse: np.ndarray  #: int64, 0-19

    def __len__(self) -> int:
        return len(self.fine)


@dataclass(frozen=True)
class Cifar100:
    root: Path
    train: CifarSplit
    test: CifarSplit
    fine_names: tuple[str, ...] | None  #: from fine_label_names.txt when the folder has it
    coarse_names: tuple[str, ...] | None


def read_cifar_bin(path: str | os.PathLike[str]) -> CifarSplit:
    """Read one binary file; DatasetError naming the file and the record for any problem."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    whole, left = divmod(raw.size, RECORD_BYTES)
    if left:
        raise DatasetError(
            f"{path} is truncated or not a CIFAR-100 binary file: its {raw.size:,} bytes are "
            f"{whole:,} records of {RECORD_BYTES:,} bytes and {left:,} bytes over"
        )
    if not whole:
        raise DatasetError(f"{path} holds no records (0 bytes)")
    records = raw.reshape(whole, RECORD_BYTES)
    coarse, fine = records[:, 0].astype(np.int64), records[:, 1].astype(np.int64)
    for name, labels, count in (("fine", fine, NUM_CLASSES), ("coarse", coarse, NUM_COARSE)):
        bad = np.flatnonzero(labels >= count)
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{path}: record {i} (byte {i * RECORD_BYTES:,}) has {name} label {labels[i]}, "
                f"outside 0-{count - 1} ({bad.size} such records): not a CIFAR-100 file "
                "(CIFAR-10's records have one label byte, not two)"
            )
    images = records[:, 2:].reshape(whole, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return CifarSplit(path, np.ascontiguousarray(images), fine, coarse)


def load_cifar100(root: str | os.PathLike[str]) -> Cifar100:
    """Both splits of the binary release, and the class names where the folder has them."""
    root = Path(root)
    if (
        root.is_dir()
        and not (root / SPLIT_FILES["train"]).exists()
        and all((root / name).is_file() for name in PICKLE_FILES)
    ):
        raise DatasetError(
            f"{root} holds the Python (pickle) release of CIFAR-100, which is not read (loading "
            "a pickle runs code): download the binary version (cifar-100-binary.tar.gz) and "
            "give its cifar-100-binary folder"
        )
    splits = {
        split: read_cifar_bin(require_file(root, name, ROOT_HINT))
        for split, name in SPLIT_FILES.items()
    }
    names = {
        kind: _read_names(root / name, count)
        for (kind, name), count in zip(NAME_FILES.items(), (NUM_CLASSES, NUM_COARSE), strict=True)
    }
    return Cifar100(root, splits["train"], splits["test"], names["fine"], names["coarse"])


def _read_names(path: Path, count: int) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    names = [name for name in names if name]
    if len(names) != count:
        raise DatasetError(f"{path} lists {len(names)} class names, expected {count}")
    return tuple(names)


class CifarImageDataset:
    """(3 x 32 x 32 float tensor, fine label) items, normalised with the CIFAR-100 statistics.

    An item key is an index or an `(index, seed, epoch)` triple from `EpochSampler`; with a
    triple and `train`, the crop offset and flip come from `np.random.default_rng((seed, epoch,
    index))`, so a resumed run sees exactly the images an uninterrupted one would.
    """

    def __init__(self, split: CifarSplit, train: bool = False, flip: bool = True) -> None:
        self.split = split
        self.train = train
        self.flip = flip
        self.labels = split.fine
        self._mean = np.asarray(CIFAR100_MEAN, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(CIFAR100_STD, dtype=np.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.split)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def __getitem__(self, key: int | tuple[int, int, int]):  # -> tuple[torch.Tensor, int]
        import torch

        if isinstance(key, tuple):
            index, seed, epoch = key
            rng = np.random.default_rng((seed, epoch, index)) if self.train else None
        else:
            index, rng = int(key), None
        image = self.split.images[index].transpose(2, 0, 1).astype(np.float32) / 255.0
        image = (image - self._mean) / self._std
        if rng is not None:
            padded = np.pad(image, ((0, 0), (PADDING, PADDING), (PADDING, PADDING)))
            top, left = rng.integers(0, 2 * PADDING + 1, size=2)
            image = padded[:, top : top + SIDE, left : left + SIDE]
            if self.flip and rng.random() < 0.5:
                image = image[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index])
