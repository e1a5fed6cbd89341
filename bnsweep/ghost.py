"""Ghost batches: one batch's loss as a sum over equal chunks, each with normalization statistics of its own.

Cohen et al. (2021) run full-batch gradient descent on a 5,000-example subset with BatchNorm statistics over
"physical batches" of 1,000: the loss is the mean over every example, so the gradient summed over the chunks,
each chunk's loss weighted by its share of the batch, is the full-batch gradient of that loss. A regression
loss here is already a sum over examples (the paper's deep linear network), so its chunks are summed unweighted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def chunks(n: int, ghost: int | None) -> list[slice]:
    """Consecutive slices of `ghost` examples covering a batch of n; one slice when ghost is None or >= n."""
    if not ghost or ghost >= n:
        return [slice(0, n)]
    return [slice(i, min(i + ghost, n)) for i in range(0, n, ghost)]


def weight(part: slice, n: int, summed: bool) -> float:
    """A chunk's weight in the batch loss: its share of the examples (mean losses) or 1 (summed losses)."""
    return 1.0 if summed else (part.stop - part.start) / n


def chunked_loss(forward: Callable[[torch.Tensor], torch.Tensor], loss_fn: Callable, x: torch.Tensor,
                 y: torch.Tensor, ghost: int | None, summed: bool) -> torch.Tensor:
    """The batch loss as one graph: loss_fn(forward(x), y) itself without ghost batches (bit for bit what the
    training step computes), else the weighted sum of the chunks' losses."""
    parts = chunks(x.shape[0], ghost)
    if len(parts) == 1:
        return loss_fn(forward(x), y)
    n = x.shape[0]
    return sum(loss_fn(forward(x[s]), y[s]) * weight(s, n, summed) for s in parts)


def backward(model: Callable[[torch.Tensor], torch.Tensor], loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
             parts: list[slice], summed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward one ghost batch at a time (each normalizes with its own statistics; only one chunk's
    graph is alive at once): the gradients add up to the batch loss's. Returns (outputs, loss), detached; one part
    (no ghost batches) is the plain step, bit for bit."""
    if len(parts) == 1:
        loss = loss_fn(out := model(x), y)
        loss.backward()
        return out.detach(), loss.detach()
    n = x.shape[0]
    outs, total = [], torch.zeros((), device=x.device)
    for part in parts:
        out = model(x[part])
        loss = loss_fn(out, y[part]) * weight(part, n, summed)
        loss.backward()
        outs.append(out.detach())
        total = total + loss.detach()
    return torch.cat(outs), total
