"""The pairwise Bradley-Terry loss of a reward model, with optional reward centering."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    *,
    center_rewards_coefficient: float = 0.0,
) -> torch.Tensor:
    """Mean of ``-log sigmoid(r_chosen - r_rejected - margin)``, plus a centering penalty.

    Under the Bradley-Terry model, ``P(chosen > rejected) = sigmoid(r_chosen - r_rejected)``;
    this is its negative log-likelihood. A margin asks for a larger gap (Llama 2). The
    centering term ``coefficient * mean((r_chosen + r_rejected) ** 2)`` (Eisenstein et al.)
    keeps rewards near zero, which the pairwise loss alone leaves free.

    Args:
        chosen_rewards: (B,) rewards of the preferred completions.
        rejected_rewards: (B,) rewards of the other completions.
        margin: (B,) required gaps, or None for zero.
        center_rewards_coefficient: weight of the centering term (0 turns it off).

    Returns:
        The scalar loss.
    """
    gap = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        gap = gap - margin
    loss = -F.logsigmoid(gap).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()
    return loss


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs where the chosen completion scores higher; a tie counts one half.

    Args:
        chosen_rewards: (B,) rewards of the preferred completions.
        rejected_rewards: (B,) rewards of the other completions.
    """
    if not len(chosen_rewards):
        return float("nan")
    wins = (chosen_rewards > rejected_rewards).float() + 0.5 * (
        chosen_rewards == rejected_rewards
    ).float()
    return float(wins.mean())
