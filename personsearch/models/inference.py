"""Prepare a trained network for fast CPU inference without changing what it computes.

    model = prepare_for_inference(model)                      # in place; returns the model
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        embeddings = model(images)

What it does (each measured by benchmarks/bench_embedding.py, see docs/benchmarks.md):
- eval mode and no parameter gradients;
- folds every BatchNorm that directly follows a convolution into that convolution's weights and
  bias (the BatchNorm becomes an Identity), so inference runs one layer instead of two;
- channels-last memory format, the layout oneDNN's CPU convolutions run fastest in (feed the
  input in that layout too, or the first convolution converts it every call).

`compile_for_inference(model)` goes further: torch.compile with weight freezing (the weights become
constants, pre-packed for oneDNN), about twice the throughput of the prepared eager model on this
project's CPU benchmark, at the price of a compilation of tens of seconds per input shape: worth it
for indexing a large gallery, not for one query.

The prepared module keeps its class, attributes and methods (only weights change and BatchNorms become
Identities), so `model.embed`, `backbone(x)["res5"]` etc. keep working. Outputs agree with the
unprepared model to float32 rounding (about 1e-6 relative). Do not train a prepared model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def prepare_for_inference(
    model: nn.Module, *, fuse_batchnorm: bool = True, channels_last: bool = True
) -> nn.Module:
    """Make `model` (in place) fast for CPU inference; see the module docstring."""
    model.eval()
    model.requires_grad_(False)
    if fuse_batchnorm:
        fuse_conv_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def compile_for_inference(model: nn.Module) -> nn.Module:
    """`prepare_for_inference`, then torch.compile with frozen weights: call it on
    channels-last input under torch.inference_mode. The first call per input shape compiles."""
    return torch.compile(prepare_for_inference(model), options={"freezing": True})


def fuse_conv_batchnorm(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm fed only by one convolution into it, in place.

    The pairs are found from the traced data flow (torch.fx), not from module names: a pair is
    folded only when every call of the norm takes the output of that convolution and that output
    goes nowhere else. Parts that cannot be traced (data-dependent control flow, as in a
    detector's post-processing) are searched submodule by submodule. Returns the pairs folded.
    """
    if model.training:
        raise ValueError("fuse_conv_batchnorm needs an eval-mode model (running statistics)")
    pairs = list(_fusable_pairs(model, prefix=""))
    for conv_name, norm_name in pairs:
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        weight, bias = fuse_conv_bn_weights(
            conv.weight,
            conv.bias,
            norm.running_mean,
            norm.running_var,
            norm.eps,
            norm.weight,
            norm.bias,
        )
        conv.weight, conv.bias = weight, bias
        _replace(model, norm_name, nn.Identity())
    return len(pairs)


def _fusable_pairs(module: nn.Module, prefix: str) -> Iterator[tuple[str, str]]:
    try:
        graph = _NormLeafTracer().trace(module)
    except Exception:  # untraceable here: look inside its children instead
        for name, child in module.named_children():
            yield from _fusable_pairs(child, f"{prefix}{name}.")
        return
    modules = dict(module.named_modules())
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    for target, nodes in calls.items():
        if not isinstance(modules[target], _NORMS):
            continue
        sources = {n.args[0].target if _is_module_call(n.args[0]) else None for n in nodes}
        if len(sources) != 1 or None in sources:
            continue
        conv_name = sources.pop()
        conv = modules[conv_name]
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != len(
            modules[target].running_mean
        ):
            continue
        conv_calls = calls[conv_name]
        if all(len(c.users) == 1 and next(iter(c.users)).target == target for c in conv_calls):
            yield f"{prefix}{conv_name}", f"{prefix}{target}"


class _NormLeafTracer(fx.Tracer):
    """torch.fx's tracer, keeping torchvision's FrozenBatchNorm2d as one call (not its ops)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, _NORMS) or super().is_leaf_module(module, qualified_name)


def _is_module_call(node: object) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module"


def _replace(model: nn.Module, qualified_name: str, replacement: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)
