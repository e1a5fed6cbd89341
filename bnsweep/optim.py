"""The optimizer: torch's SGD update, with NFNets' adaptive gradient clipping and a slow parameter group.

The model says which parameters go in which group (models.Net.configure_optimizer, as nanoGPT's
configure_optimizers): the optimizer never names a variant.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.sgd import sgd

from bnsweep.errors import BnsweepError

AGC_EPS = 1e-3  # NFNets' floor of a unit's weight norm, so zero-initialised weights can still move (nfnets/optim.py)


def unitwise_norm(t: torch.Tensor) -> torch.Tensor:
    """The norm of each output unit of a weight (each row of a linear layer, each filter of a convolution: every
    dim but 0), kept broadcastable against `t`; a scalar or vector (gains, biases) counts as one unit, as in the
    NFNet authors' unitwise_norm."""
    if t.squeeze().dim() <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


@torch.no_grad()
def adaptive_clip_(params: list[torch.Tensor], grads: list[torch.Tensor], clip: float, eps: float = AGC_EPS) -> None:
    """Adaptive gradient clipping (Brock et al. 2021b), in place, unit-wise: a unit's gradient G becomes
    clip * max(|W|, eps) / |G| * G where |G| / max(|W|, eps) > clip, and stays as it is elsewhere."""
    for p, g in zip(params, grads, strict=True):
        limit = unitwise_norm(p).clamp_min_(eps).mul_(clip)
        # min(1, limit/|G|) is the rule's factor: below 1 exactly where |G| > limit (1e-6 guards |G| = 0)
        g.mul_((limit / unitwise_norm(g).clamp_min_(1e-6)).clamp_max_(1.0))


class SGD:
    """torch.optim.SGD's update through torch's own functional `sgd`, the function SGD.step calls: the same
    arithmetic bit for bit (a test compares them). Not torch.optim.SGD itself: the first use of any
    torch.optim.Optimizer imports torch's compiler stack (torch._dynamo, sympy), 150 MB in every Ray worker,
    for nothing a plain loop uses. With agc_clip > 0 the gradients are first clipped by adaptive_clip_, except
    those of `unclipped` (NF-ResNets leave the final linear layer unclipped). The `slow` parameters step at
    lr * slow_lr (Fixup's scalars: the two parameter groups of the authors' torch.optim.SGD)."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 agc_clip: float = 0.0, unclipped: list[torch.Tensor] = (), slow: list[torch.Tensor] = (),
                 slow_lr: float = 1.0):  # fmt: skip
        self.params, self.lr, self.momentum, self.weight_decay = list(params), lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)  # momentum buffers, made on step 1
        self.agc_clip = agc_clip
        skip = {id(p) for p in unclipped}
        self.clipped = [p for p in self.params if id(p) not in skip]
        is_slow = {id(p) for p in slow}
        groups = ([i for i, p in enumerate(self.params) if id(p) not in is_slow], 1.0), (
            [i for i, p in enumerate(self.params) if id(p) in is_slow], slow_lr)
        self.groups = [(indices, factor) for indices, factor in groups if indices]  # (parameter indices, lr factor)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if self.agc_clip > 0:
            clipped = [p for p in self.clipped if p.grad is not None]
            adaptive_clip_(clipped, [p.grad for p in clipped], self.agc_clip)
        for indices, factor in self.groups:
            live = [i for i in indices if self.params[i].grad is not None]  # as SGD: params without a grad wait
            buffers = [self.buffers[i] for i in live]
            sgd([self.params[i] for i in live], [self.params[i].grad for i in live], buffers, foreach=True,
                weight_decay=self.weight_decay, momentum=self.momentum, lr=self.lr * factor, dampening=0.0,
                nesterov=False, maximize=False)
            for i, b in zip(live, buffers, strict=True):
                self.buffers[i] = b

    def state_dict(self) -> dict[str, Any]:
        return {"momentum_buffers": list(self.buffers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "state" in state:  # a checkpoint written by torch.optim.SGD (bnsweep before 2026-11-30)
            buffers = [state["state"].get(i, {}).get("momentum_buffer") for i in range(len(self.params))]
        else:
            buffers = state["momentum_buffers"]
        if len(buffers) != len(self.params):
            raise BnsweepError(f"optimizer checkpoint has {len(buffers)} momentum buffers for {len(self.params)} "
                               "parameters: resume with the same architecture and variant")
        self.buffers = [None if b is None else b.to(p.device) for b, p in zip(buffers, self.params, strict=True)]
