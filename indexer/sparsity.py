"""The channel-sparsity objective of the paper's Appendix A (eqs. A3–A5).

R(θ) = L_task + λ · L_sp · γ,   γ = max(0, (R_sp − β) / (1 − β))^α

- R_sp (A3): the ratio of φ's channels whose activation, summed over the batch and
  all positions, is non-zero. ReLU gives exact zeros, so "non-zero" means > 0.
- L_sp (A4): the mean over φ's channels of (sum of the channel's positive kernel
  weights + its bias). Driving it down makes a channel's pre-activation ≤ 0 for every
  non-negative input (all of φ's inputs are images in [0, 1] or ReLU outputs), which is
  exactly a dead channel.
- γ (A5): 0 once R_sp ≤ β, so the pressure stops at the target ratio of active
  channels β = 1 − target sparsity; α sets how fast it fades on the way.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_activity(acts: list[torch.Tensor]) -> torch.Tensor:
    """Per-channel summed activation over batch and space, concatenated over φ. (N,)"""
    return torch.cat([a.detach().sum(dim=(0, 2, 3)) for a in acts])


def active_ratio(acts: list[torch.Tensor]) -> float:
    """R_sp (A3): fraction of φ's channels with non-zero summed activation in this batch."""
    return (channel_activity(acts) > 0).float().mean().item()


def weight_sparsity_loss(convs: list[nn.Conv2d]) -> torch.Tensor:
    """L_sp (A4): mean over φ's channels of the channel's positive kernel weights plus bias."""
    per_channel = [
        conv.weight.clamp(min=0).sum(dim=(1, 2, 3)) + conv.bias for conv in convs
    ]
    return torch.cat(per_channel).mean()


def sparsity_gamma(r_sp: float, beta: float, alpha: float) -> float:
    """γ (A5): ((R_sp − β) / (1 − β))^α, clamped at 0 once the target is reached."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta (target ratio of active channels) must be in [0, 1), got {beta}")
    return max(0.0, (r_sp - beta) / (1.0 - beta)) ** alpha
