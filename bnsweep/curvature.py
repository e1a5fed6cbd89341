"""The Hessian's spectrum beyond its top eigenvalue: top-k and bottom eigenvalues, the trace (Hutchinson) and an
eigenvalue density (stochastic Lanczos quadrature), of the whole network or of one layer's block, and the batch
sharpness of a minibatch. Pure functions of a loss closure; bnsweep/probes.py calls them on a step's own batch.

Stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao 2019, "An Investigation into Neural Net Optimization via
Hessian Eigenvalue Density"; Lin, Saad, Yang 2016): m Lanczos steps from q = z / |z|, z a Rademacher vector, give
the tridiagonal T = S diag(theta) S'; the Gauss quadrature nodes theta_j with weights tau_j = S_1j^2 satisfy
sum_j tau_j theta_j^p = q' H^p q exactly for p <= 2m - 1, and E[q' H^p q] = tr(H^p) / n. So
sum_j tau_j delta(x - theta_j), averaged over runs, estimates the eigenvalue density (1/n) sum_i delta(x - lambda_i).

Hutchinson (1990): E[z' H z] = tr(H) for Rademacher z. A Lanczos run's first coefficient is alpha_1 = q' H q, so
n * alpha_1 = z' H z: each SLQ run's start vector is a Hutchinson sample at no extra Hessian-vector product; the
samples beyond the runs cost one product each.

Outliers. The literature defines outliers by eye (Sagun et al. 2017, Papyan 2020: "a collection of eigenvalues,
each individually separated from the bulk"); no numeric rule is sourced. This module's rule, named in every row:
a Gauss node stands for about tau_j * n eigenvalues, a node that has converged to an isolated eigenvalue for about
one (E[(q' u)^2] = 1/n). The bulk edge is the largest node, over all runs, standing for at least BULK_NODE
eigenvalues in its own run; an outlier is a top-k eigenvalue above it. A block of few parameters, where every node
may stand for fewer, has no bulk: NaN then. The bulk's top Gauss node carries the smallest of its weights (of
order 1/m^2 of the bulk for m steps), so the rule is meant for n well above BULK_NODE * m^2 (the cpu VGG-11's
600,000 parameters at m = 20); below that, the bulk's top node can count as an outlier (tests/test_dynamics.py).

Batch sharpness (Andreyev & Beneventano 2024, "Edge of Stochastic Stability", arXiv 2412.20553): on a minibatch B,
g_B' H_B g_B / |g_B|^2, the curvature of the minibatch's own loss along its own gradient, averaged over minibatches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bnsweep.dynamics import lanczos_tridiagonal

Params = dict[str, torch.Tensor]
Matvec = Callable[[torch.Tensor], torch.Tensor]

BULK_NODE = 10  # a Gauss node standing for at least this many eigenvalues belongs to the bulk (module docstring)
OUTLIER_RULE = f"> bulk_edge (largest SLQ node with weight >= {BULK_NODE}/params in its run)"


@dataclass
class Quadrature:
    """One Lanczos run: Ritz values (the Gauss nodes, ascending), their weights (summing to 1) and alpha_1."""

    nodes: list[float]
    weights: list[float]
    first: float  # alpha_1 = q' H q


@dataclass
class BlockSpectrum:
    """What the spectrum probe records for one block (the whole network or one layer's parameters)."""

    params: int
    top_eigenvalues: list[float]
    bottom: float
    trace: float
    trace_se: float
    slq_nodes: list[float]
    slq_weights: list[float]
    bulk_edge: float
    outliers: int | None


def lanczos_quadrature(matvec: Matvec, start: torch.Tensor, iters: int) -> Quadrature:
    """Gauss quadrature of the spectral measure seen from `start`: the Ritz values of dynamics.lanczos_tridiagonal
    (at most dim steps; it stops early at an invariant subspace, where the quadrature is exact) and the squared
    first components of their eigenvectors."""
    t, _ = lanczos_tridiagonal(matvec, start, min(iters, start.numel()))
    k, first = t.shape[0], float(t[0, 0])
    if not torch.isfinite(t).all():
        return Quadrature([math.nan] * k, [1.0 / k] * k, first)
    values, vectors = torch.linalg.eigh(t)
    return Quadrature(values.tolist(), (vectors[0] ** 2).tolist(), first)


def rademacher(n: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A vector of n independent +-1 entries, drawn on the CPU so a seed gives the same vector on every device."""
    return (torch.randint(0, 2, (n,), generator=generator).to(dtype) * 2 - 1).to(device)


def block_spectrum(matvec: Matvec, n: int, k: int, runs: int, iters: int, samples: int,
                   generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> BlockSpectrum:
    """Top-k and bottom eigenvalues, trace and SLQ density of the symmetric operator `matvec` of dimension n.

    top_eigenvalues: the k largest Ritz values of the first run (descending; fewer when it stopped earlier);
    bottom: the smallest Ritz value of all runs (each lies in [lambda_min, lambda_max]); trace: the mean of
    `samples` Hutchinson samples, the first min(runs, samples) of them the runs' own start vectors."""
    runs_out, hutch = [], []
    for _ in range(runs):
        z = rademacher(n, generator, dtype, device)
        quad = lanczos_quadrature(matvec, z, iters)
        runs_out.append(quad)
        if len(hutch) < samples:
            hutch.append(n * quad.first)
    while len(hutch) < samples:
        z = rademacher(n, generator, dtype, device)
        hutch.append(float(torch.dot(z, matvec(z))))
    nodes = [x for quad in runs_out for x in quad.nodes]
    weights = [w / runs for quad in runs_out for w in quad.weights]
    top = sorted(runs_out[0].nodes, reverse=True)[:k]
    edge = bulk_edge(runs_out, n)
    outliers = None if math.isnan(edge) else sum(1 for x in top if x > edge)
    trace, se = mean_se(hutch)
    return BlockSpectrum(params=n, top_eigenvalues=top, bottom=min(nodes), trace=trace, trace_se=se,
                         slq_nodes=nodes, slq_weights=weights, bulk_edge=edge, outliers=outliers)


def bulk_edge(runs: Sequence[Quadrature], n: int) -> float:
    """The largest Gauss node standing for at least BULK_NODE eigenvalues in its own run (NaN: none does)."""
    bulk = [x for quad in runs for x, w in zip(quad.nodes, quad.weights, strict=True) if w * n >= BULK_NODE]
    return max(bulk) if bulk else math.nan


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(count); NaN for fewer than 2 values)."""
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (count - 1)
    return mean, math.sqrt(var / count)


class Hessian:
    """Hessian-vector products of loss_of at params, restricted to any block of named parameters: one gradient
    graph (double backward), built once and reused by every block's products."""

    def __init__(self, loss_of: Callable[[Params], torch.Tensor], params: Params):
        self.leaves = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
        loss = loss_of(self.leaves)
        self.loss = float(loss.detach())
        names = list(self.leaves)
        self.grads = dict(zip(names, torch.autograd.grad(loss, [self.leaves[n] for n in names], create_graph=True),
                              strict=True))

    def size(self, names: Sequence[str]) -> int:
        return sum(self.leaves[n].numel() for n in names)

    def matvec(self, names: Sequence[str]) -> Matvec:
        """v -> H_SS v for the block S of `names` (flat vectors over the block, in the order of `names`)."""
        tensors = [self.leaves[n] for n in names]
        outputs = [self.grads[n] for n in names]
        sizes = [t.numel() for t in tensors]

        def product(v: torch.Tensor) -> torch.Tensor:
            parts = [piece.view_as(t) for piece, t in zip(v.split(sizes), tensors, strict=True)]
            hv = torch.autograd.grad(outputs, tensors, grad_outputs=parts, retain_graph=True, allow_unused=True)
            return torch.cat([(torch.zeros_like(t) if h is None else h).reshape(-1)
                              for h, t in zip(hv, tensors, strict=True)])
        return product


def batch_sharpness(loss_of: Callable[[Params], torch.Tensor], params: Params) -> float:
    """g' H g / |g|^2 of loss_of at params, g its own gradient (one gradient graph, one Hessian-vector product);
    NaN for a zero gradient."""
    leaves = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    tensors = list(leaves.values())
    grads = torch.autograd.grad(loss_of(leaves), tensors, create_graph=True, allow_unused=True)
    pairs = [(g, t) for g, t in zip(grads, tensors, strict=True) if g is not None]
    g = [p.detach() for p, _ in pairs]
    hg = torch.autograd.grad([p for p, _ in pairs], [t for _, t in pairs], grad_outputs=g, allow_unused=True)
    g_sq = sum(float((a.double() ** 2).sum()) for a in g)
    ghg = sum(float((a.double() * h.double()).sum()) for a, h in zip(g, hg, strict=True) if h is not None)
    return ghg / g_sq if g_sq > 0 else math.nan
