"""Re-id losses as pure functions of logits and labels (no modules, no state).

Computed in float32 whatever the input precision, so mixed-precision training cannot overflow
the softmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax cross-entropy over identity classes, averaged over the batch (paper Eq. 1)."""
    return F.cross_entropy(logits.float(), labels)


def softened_log_probs(logits: Tensor, temperature: float) -> Tensor:
    """log of the temperature-softened class probabilities (paper Eq. 3)."""
    return F.log_softmax(logits.float() / temperature, dim=1)


def clsa_alignment_kl(
    top_logits: Tensor,
    level_logits: Sequence[Tensor],
    temperature: float = 3.0,
    detach_teacher: bool = True,
) -> Tensor:
    """Cross-level semantic alignment: T^2 * sum_s KL(softened top || softened level s).

    This is the second term of the paper's Eq. (4) with Eq. (2): KL(p~K || p~s) = sum_j p~K_j
    log(p~K_j / p~s_j), the top level's softened distribution being the target each lower level
    is pulled towards; averaged over the batch. With `detach_teacher` no gradient flows into the
    top level through this term (see docs/models.md for why that is the default).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    teacher = softened_log_probs(top_logits, temperature)
    if detach_teacher:
        teacher = teacher.detach()
    total = teacher.new_zeros(())
    for logits in level_logits:
        student = softened_log_probs(logits, temperature)
        total = total + F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return temperature**2 * total


@torch.no_grad()
def softened_distribution_stats(logits: Tensor, temperature: float) -> dict[str, Tensor]:
    """How peaked softmax(logits / T) is: batch means of its entropy (nats) and top probability.

    `max_entropy` = log(number of classes), the entropy of the uniform distribution, for
    reference: a teacher near it has little to teach the levels aligned to it. Diagnostics only
    (no gradient); 0-dim float32 tensors, left on the logits' device so logging them every step
    costs no synchronisation.
    """
    log_probs = softened_log_probs(logits, temperature)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(dim=1)
    return {
        "entropy": entropy.mean(),
        "max_entropy": log_probs.new_tensor(math.log(logits.shape[1])),
        "max_prob": probs.max(dim=1).values.mean(),
    }


@torch.no_grad()
def top1_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose highest logit is the label (0-dim float32, no gradient)."""
    return (logits.argmax(dim=1) == labels).float().mean()


def l2_normalize(features: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows scaled to unit length (zero rows stay zero)."""
    return F.normalize(features, p=2, dim=1, eps=eps)
