"""Dynamic task weighting (Ming et al., ICCVW 2019, "Dynamic Multi-Task Learning for Face Recognition
with Facial Expression", arXiv 1911.03281).

A small unit on the shared features outputs softmax task weights ``w = (w_id, w_expr)``:
``w = mean over the batch of softmax(features.detach() @ A + b)``. The main network minimises

    L_total = w_id * L_id + w_expr * L_expr        (w detached: the main optimiser never moves the unit)

and the unit, with its own optimiser, minimises

    L_w = w_id / (L_id + sigma) + w_expr / (L_expr + sigma),   sigma = 0.01

with both task losses detached, so L_w reaches neither the trunk nor the heads. dL_w/dw_k =
1 / (L_k + sigma) is smallest for the task with the LARGER loss, so gradient descent on L_w shifts
weight toward the harder task. The unit starts with A = 0, b = 0: w = (0.5, 0.5), the same as the
fixed equal weights it is compared with.
"""

from __future__ import annotations

import torch
from torch import nn

SIGMA = 0.01


class TaskWeighting(nn.Module):
    """Features [N, F] -> task weights [T] (softmax per sample, averaged over the batch)."""

    def __init__(self, in_features: int = 256, n_tasks: int = 2):
        super().__init__()
        self.fc = nn.Linear(in_features, n_tasks)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(features.detach()), dim=-1).mean(0)


def weighting_loss(weights: torch.Tensor, task_losses: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """L_w = sum_k w_k / (L_k + sigma), the task losses detached."""
    return (weights / (task_losses.detach() + sigma)).sum()


def total_loss(weights: torch.Tensor, task_losses: torch.Tensor) -> torch.Tensor:
    """sum_k w_k L_k with w detached (what the main network's optimiser minimises)."""
    return (weights.detach() * task_losses).sum()


class DynamicWeights:
    """The unit plus its own optimiser. ``step(features, losses)`` returns (weights, L_w) and updates the unit."""

    def __init__(self, in_features: int = 256, n_tasks: int = 2, lr: float = 1e-3, sigma: float = SIGMA,
                 device: str | torch.device = "cpu"):
        self.unit = TaskWeighting(in_features, n_tasks).to(device)
        self.optimizer = torch.optim.Adam(self.unit.parameters(), lr=lr)
        self.sigma = sigma

    def weights(self, features: torch.Tensor) -> torch.Tensor:
        return self.unit(features)

    def step(self, weights: torch.Tensor, task_losses: torch.Tensor) -> torch.Tensor:
        """One update of the unit on L_w for the weights it produced this step; returns L_w."""
        lw = weighting_loss(weights, task_losses, self.sigma)
        self.optimizer.zero_grad(set_to_none=True)
        lw.backward()
        self.optimizer.step()
        return lw.detach()
