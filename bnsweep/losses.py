"""The training losses: cross-entropy, Cohen et al.'s squared loss, and the deep linear network's summed squared
error."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_function(task: str, loss: str = "cross_entropy"):
    """The training loss: loss_fn(out, y, reduction="mean"|"sum") for classification; regression is a sum."""
    if task == "regression":
        # The paper's deep linear network minimises the squared error summed over the samples (protocol §1b).
        return lambda out, y, reduction="sum": (out - y).pow(2).sum()
    return squared_loss if loss == "mse" else F.cross_entropy


def squared_loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cohen et al.'s squared loss: half the squared error of the outputs against one-hot targets, summed over
    classes, averaged over examples (their SquaredLoss sums it and divides by the data set's size)."""
    target = F.one_hot(y, out.shape[1]).to(out.dtype)
    per_example = 0.5 * (out - target).pow(2).sum(1)
    return per_example.sum() if reduction == "sum" else per_example.mean()
