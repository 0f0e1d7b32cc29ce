"""The loss functions against hand computations of the paper's Eq. (1)-(4)."""

from __future__ import annotations

import math

import pytest
import torch

from personsearch.models.losses import clsa_alignment_kl, cross_entropy, l2_normalize


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True))


TOP = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]
LEVEL_A = [[0.5, 0.5, 0.0], [1.0, -1.0, 2.0]]
LEVEL_B = [[-1.0, 2.0, 1.0], [0.3, 0.2, 0.1]]


def test_cross_entropy_is_mean_negative_log_softmax() -> None:
    labels = [0, 2]
    expected = sum(-math.log(_softmax(row)[y]) for row, y in zip(TOP, labels, strict=True)) / 2
    value = cross_entropy(torch.tensor(TOP), torch.tensor(labels))
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 5.0])
def test_alignment_is_t_squared_sum_of_kl_top_to_level(temperature: float) -> None:
    # Eq. (2)-(4): T^2 * sum_s mean_n sum_j p~K_j log(p~K_j / p~s_j)
    expected = 0.0
    for level in (LEVEL_A, LEVEL_B):
        per_sample = [
            _kl(_softmax(top, temperature), _softmax(low, temperature))
            for top, low in zip(TOP, level, strict=True)
        ]
        expected += sum(per_sample) / len(per_sample)
    expected *= temperature**2
    value = clsa_alignment_kl(
        torch.tensor(TOP), [torch.tensor(LEVEL_A), torch.tensor(LEVEL_B)], temperature
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_alignment_direction_is_top_first() -> None:
    """KL is asymmetric: the top level's distribution is the reference (Eq. 2), not the level's."""
    top, low = torch.tensor(TOP), torch.tensor(LEVEL_A)
    forward = clsa_alignment_kl(top, [low], temperature=1.0).item()
    reverse = clsa_alignment_kl(low, [top], temperature=1.0).item()
    hand = sum(_kl(_softmax(t), _softmax(s)) for t, s in zip(TOP, LEVEL_A, strict=True)) / 2
    assert forward == pytest.approx(hand, rel=1e-5)
    assert abs(forward - reverse) > 1e-3


def test_alignment_is_zero_when_levels_agree_with_top() -> None:
    top = torch.randn(4, 7)
    assert clsa_alignment_kl(top, [top.clone(), top + 5.0]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("detach", [True, False])
def test_detached_teacher_gets_no_gradient(detach: bool) -> None:
    top = torch.tensor(TOP, requires_grad=True)
    low = torch.tensor(LEVEL_A, requires_grad=True)
    clsa_alignment_kl(top, [low], temperature=3.0, detach_teacher=detach).backward()
    assert low.grad is not None and low.grad.abs().sum() > 0
    if detach:
        assert top.grad is None
    else:
        assert top.grad is not None and top.grad.abs().sum() > 0


def test_half_precision_logits_give_float32_losses() -> None:
    top, low = torch.tensor(TOP).half(), torch.tensor(LEVEL_A).half()
    assert clsa_alignment_kl(top, [low]).dtype == torch.float32
    assert cross_entropy(top, torch.tensor([0, 1])).dtype == torch.float32


def test_bad_temperature_and_empty_levels() -> None:
    with pytest.raises(ValueError, match="temperature"):
        clsa_alignment_kl(torch.tensor(TOP), [torch.tensor(LEVEL_A)], temperature=0.0)
    assert clsa_alignment_kl(torch.tensor(TOP), []).item() == 0.0


def test_l2_normalize_rows() -> None:
    rows = l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(rows, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
