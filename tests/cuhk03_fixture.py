"""Tiny CUHK03 folders in the real formats, for tests: PNG crops named as the release's, the new
protocol's MATLAB v5 files (scipy), and a MATLAB v7.3 cuhk-03.mat (HDF5, h5py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: (pair, pid within the pair, global identity, split); each identity has 2 crops per view.
IDENTITIES = [
    (1, 1, 1, "train"),
    (1, 2, 2, "train"),
    (2, 1, 3, "train"),
    (2, 2, 4, "test"),
    (1, 3, 5, "test"),
]
CROP_SIZE = (24, 48)  # width, height


def crop_names(pair: int, pid: int) -> list[tuple[str, int]]:
    """(file name, view) of one identity's crops: images 1-2 in view 1, 6-7 in view 2."""
    return [
        (f"{pair}_{pid:03d}_{1 if i <= 5 else 2}_{i:02d}.png", 1 if i <= 5 else 2)
        for i in (1, 2, 6, 7)
    ]


def write_cuhk03(root: Path, variants: tuple[str, ...] = ("labeled", "detected")) -> Path:
    """The torchreid layout: images_<variant>/ and cuhk03_new_protocol_config_<variant>.mat.

    Test identities give one query per view (their first crop in it), the rest is gallery.
    """
    root.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        folder = root / f"images_{variant}"
        folder.mkdir(exist_ok=True)
        files, labels, cams, train, query, gallery = [], [], [], [], [], []
        for pair, pid, label, split in IDENTITIES:
            seen_views = set()
            for name, view in crop_names(pair, pid):
                shade = (40 * label) % 256
                Image.new("RGB", CROP_SIZE, (shade, 100 + view, 60)).save(folder / name)
                files.append(name)
                labels.append(label)
                cams.append(view)
                index = len(files)  # 1-based
                if split == "train":
                    train.append(index)
                elif view not in seen_views:
                    seen_views.add(view)
                    query.append(index)
                else:
                    gallery.append(index)
        write_protocol(
            root / f"cuhk03_new_protocol_config_{variant}.mat",
            files,
            labels,
            cams,
            train,
            query,
            gallery,
        )
    return root


def write_protocol(path: Path, files, labels, cams, train, query, gallery, **extra) -> None:
    """A new-protocol file as MATLAB writes it: a cell of names, doubles in columns."""
    from scipy.io import savemat

    cell = np.empty((len(files), 1), dtype=object)
    for i, name in enumerate(files):
        cell[i, 0] = name
    column = lambda values: np.asarray(values, dtype=np.float64).reshape(-1, 1)  # noqa: E731
    values = {
        "filelist": cell,
        "labels": column(labels),
        "camId": column(cams),
        "train_idx": column(train),
        "query_idx": column(query),
        "gallery_idx": column(gallery),
    }
    values.update(extra)
    savemat(path, values)


def release_images(variant: str, seed: int = 0) -> list[list[list[np.ndarray | None]]]:
    """Images of a tiny release: 2 camera pairs of 2 and 1 identities, 10 columns each (some
    empty), H x W x 3 uint8 with W != H so a wrong transpose shows."""
    rng = np.random.default_rng((seed, len(variant)))

    def image(height: int = 12, width: int = 7) -> np.ndarray:
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)

    row = lambda present: [image() if i in present else None for i in range(10)]  # noqa: E731
    return [[row({0, 1, 5, 6, 7}), row({0, 9})], [row({2, 3, 4, 8})]]


def write_release_mat(
    path: Path, variants: tuple[str, ...] = ("labeled", "detected"), images: dict | None = None
) -> dict:
    """cuhk-03.mat as MATLAB v7.3 writes it: HDF5 with cells as arrays of object references
    into #refs#, each image stored transposed (3, W, H), an empty cell as MATLAB's [] (a
    2-element uint64 shape vector marked MATLAB_empty). Returns the images written."""
    import h5py

    images = images or {variant: release_images(variant) for variant in variants}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        counter = iter(range(10**6))

        def store(array: np.ndarray, **attrs) -> h5py.Reference:
            dataset = refs.create_dataset(f"r{next(counter)}", data=array)
            for key, value in attrs.items():
                dataset.attrs[key] = value
            return dataset.ref

        for variant, pairs in images.items():
            pair_refs = []
            for pair in pairs:
                cells = np.empty((10, len(pair)), dtype=h5py.ref_dtype)  # transposed on disk
                for person, row in enumerate(pair):
                    for column, pixels in enumerate(row):
                        if pixels is None:
                            ref = store(np.zeros(2, dtype=np.uint64), MATLAB_empty=1)
                        else:
                            ref = store(np.ascontiguousarray(pixels.T))
                        cells[column, person] = ref
                pair_refs.append(store(cells))
            top = np.empty((1, len(pair_refs)), dtype=h5py.ref_dtype)
            top[0, :] = pair_refs
            handle.create_dataset(variant, data=top)
    with open(path, "r+b") as raw:  # the v7.3 header sits in the user block
        raw.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116))
    return images
