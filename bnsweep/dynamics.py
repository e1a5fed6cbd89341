"""The measurements behind the dynamics probes: sharpness by Lanczos (edge of stability, Cohen et al. 2021) and
the scale-invariance identities of a weight layer that feeds a normalization (Arora, Li, Lyu 2019; Wan et al.).

Pure functions of tensors; bnsweep/probes.py calls them on a training step's own batch and gradients.

Scale invariance, derived here. Let y = W x + b be a weight layer's output and z = gamma * y_hat + beta the
normalization after it, y_hat = (y - mu(y)) / s(y) over the normalization's groups (BatchNorm: a channel over
batch, H, W; LayerNorm/GroupNorm: a sample's group of channels; the lp variants: a channel, s = N_p + eps).
Scaling w = (W, b) by c scales y by c, so <w, dL/dw> = dL(c w)/dc at c = 1 = <dL/dy, y>. With
s = sqrt(v + eps) (v the biased variance), y_hat(c y) = c (y - mu) / sqrt(c^2 v + eps), whose derivative at
c = 1 is y_hat * eps / (v + eps); with s = N_p + eps (N_p(c y) = c N_p(y)), it is y_hat * eps / (N_p + eps). So

    <w, dL/dw> = sum over groups of kappa * <dL/dy_hat, y_hat>,   dL/dy_hat = gamma * dL/dz,
    kappa = eps / (v + eps)  (batch, noisy_batch, layer, group),   kappa = eps / (N_p + eps)  (lp variants),

which is 0 for eps = 0. noisy_batch adds s * z + m after the normalization: dL/dz = s * dL/d(output).

The norm after one optimizer step. torch's SGD: b_t = alpha b_{t-1} + g + lambda w, w_{t+1} = w - eta b_t, so
|w_{t+1}|^2 - |w|^2 = -2 eta <w, b_t> + eta^2 |b_t|^2 and <w, b_t> = alpha <w, b_{t-1}> + <w, g> + lambda |w|^2.
Replacing <w, g> by its prediction above gives the predicted change; with alpha = lambda = 0 and eps = 0 it is
Arora et al.'s |w_{t+1}|^2 = |w|^2 + eta^2 |g|^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from bnsweep import variants
from bnsweep.norms import BatchNorm, LpBatchNorm

Params = dict[str, torch.Tensor]

# Variants whose output does not change when the weights (and bias) before them are scaled (bnsweep/variants.py).
SCALE_INVARIANT = tuple(v.name for v in variants.VARIANTS if v.scale_invariant)


# ---------------------------------------------------------------- sharpness


@dataclass
class Spectrum:
    """Extreme Hessian eigenvalues from Lanczos: the largest (sharpness) and smallest Ritz values, the residual
    |H v - lambda v| / |lambda| of the top Ritz pair, and the Lanczos steps taken."""

    top: float
    bottom: float
    residual: float
    steps: int


def lanczos_tridiagonal(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                        iters: int) -> tuple[torch.Tensor, float]:
    """Lanczos with full re-orthogonalization (twice, so float32 vectors stay orthogonal) on a symmetric operator:
    the tridiagonal matrix T (float64, k x k, k <= iters; it may hold non-finite entries) and the norm of the last,
    unused residual. Exact after `dim` steps on a dim-dimensional operator. The sharpness (lanczos) and the SLQ
    density (curvature.lanczos_quadrature) both solve this T."""
    q = start / torch.linalg.vector_norm(start)
    basis, alphas, betas = [q], [], []
    beta = 0.0
    for j in range(iters):
        w = matvec(basis[j])
        alpha = float(torch.dot(w, basis[j]))
        alphas.append(alpha)
        q_mat = torch.stack(basis)
        for _ in range(2):
            w = w - q_mat.T @ (q_mat @ w)
        beta = float(torch.linalg.vector_norm(w))
        if j == iters - 1 or beta <= 1e-10 * max(abs(alpha), 1e-30) or not math.isfinite(beta):
            break  # an invariant subspace (or the budget) ends it: the Ritz values are exact there
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[:k - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return t, beta


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, iters: int) -> Spectrum:
    """Extreme Ritz values of the symmetric operator `matvec` after `iters` Lanczos steps from `start`."""
    t, beta = lanczos_tridiagonal(matvec, start, iters)
    k = t.shape[0]
    if not torch.isfinite(t).all():
        return Spectrum(math.nan, math.nan, math.nan, k)
    values, vectors = torch.linalg.eigh(t)
    top = float(values[-1])
    # |H v - theta v| of a Ritz pair is |beta_k s_k|, beta_k the norm of the last (unused) Lanczos residual
    residual = abs(beta * float(vectors[-1, -1])) / abs(top) if top != 0 else math.nan
    return Spectrum(top, float(values[0]), residual, k)


def hessian_spectrum(loss_of: Callable[[Params], torch.Tensor], params: Params, iters: int,
                     generator: torch.Generator) -> Spectrum:
    """Extreme eigenvalues of the Hessian of loss_of at params, by Lanczos on Hessian-vector products (double
    backward through one cached gradient graph). Start vector from `generator` (a CPU generator)."""
    leaves = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    tensors = list(leaves.values())
    grads = torch.autograd.grad(loss_of(leaves), tensors, create_graph=True)
    sizes = [p.numel() for p in tensors]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        parts = [piece.view_as(p) for piece, p in zip(v.split(sizes), tensors, strict=True)]
        hv = torch.autograd.grad(grads, tensors, grad_outputs=parts, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv])

    dtype, device = tensors[0].dtype, tensors[0].device
    start = torch.randn(sum(sizes), generator=generator, dtype=dtype).to(device)
    return lanczos(matvec, start, iters)


def eos_threshold(lr: float, momentum: float = 0.0) -> float:
    """The step size's stability limit on the sharpness: 2/eta for gradient descent, 2(1 + alpha)/eta with heavy-ball
    momentum alpha (a quadratic's heavy-ball iteration is stable iff eta * lambda < 2 + 2 alpha)."""
    return 2.0 * (1.0 + momentum) / lr


# ---------------------------------------------------------------- scale invariance


def eps_term(norm: nn.Module, y: torch.Tensor, grad_z: torch.Tensor) -> torch.Tensor | None:
    """The predicted <w, dL/dw> of the weight layer whose output y feeds `norm`, from the gradient with respect
    to the normalization's affine output z (before any noise): sum of kappa <gamma dL/dz, y_hat> over the
    normalization's groups (module docstring), in float64. None for a module whose eps term is not derived."""
    y, g = y.detach().double(), grad_z.detach().double()
    shape = (1, -1) + (1,) * (y.dim() - 2)
    gamma = getattr(norm, "weight", None)
    if gamma is not None:
        g = g * gamma.detach().double().view(shape)
    if isinstance(norm, BatchNorm | LpBatchNorm):
        dims = [0, *range(2, y.dim())]
        if isinstance(norm, LpBatchNorm):
            mean, scale = norm.batch_stats(y)
            y_hat = (y - mean.view(shape)) / (scale + norm.eps).view(shape)
            kappa = norm.eps / (scale + norm.eps)
        else:
            var, mean = torch.var_mean(y, dims, correction=0)
            y_hat = (y - mean.view(shape)) / (var + norm.eps).sqrt().view(shape)
            kappa = norm.eps / (var + norm.eps)
        return (kappa * (g * y_hat).sum(dims)).sum()
    if isinstance(norm, nn.GroupNorm):
        n = y.shape[0]
        yg, gg = y.reshape(n, norm.num_groups, -1), g.reshape(n, norm.num_groups, -1)
        var, mean = torch.var_mean(yg, 2, correction=0, keepdim=True)
        y_hat = (yg - mean) / (var + norm.eps).sqrt()
        kappa = norm.eps / (var + norm.eps)
        return (kappa * (gg * y_hat).sum(2, keepdim=True)).sum()
    return None


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One float64 vector of the tensors' elements (a layer's weight and bias as the one vector w)."""
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def predicted_change(w: torch.Tensor, g: torch.Tensor, buffer: torch.Tensor | None, inner_pred: float,
                     lr: float, momentum: float, weight_decay: float) -> dict[str, float]:
    """Predicted |w_{t+1}|^2 - |w_t|^2 under torch's SGD (module docstring), with <w, g> replaced by inner_pred,
    and `scale`: the sum of the magnitudes of its terms (what a relative error of the change is relative to).
    buffer: the momentum buffer b_{t-1} before the step (None on the first step or without momentum)."""
    b_prev = torch.zeros_like(w) if buffer is None or momentum == 0 else buffer
    b = momentum * b_prev + g + weight_decay * w
    w_b_prev = float(torch.dot(w, b_prev))
    w_sq = float(torch.dot(w, w))
    radial = inner_pred + weight_decay * w_sq + momentum * w_b_prev  # <w, b_t> as predicted
    b_sq = float(torch.dot(b, b))
    scale = lr * lr * b_sq + 2 * lr * (abs(inner_pred) + weight_decay * w_sq + momentum * abs(w_b_prev))
    return {"change": -2 * lr * radial + lr * lr * b_sq, "scale": scale}


def angle(w: torch.Tensor, u: torch.Tensor) -> float:
    """The angle between w and w + u, stable for tiny updates: atan2(|u_perp|, |w| + <u, w_hat>)."""
    w_norm = float(torch.linalg.vector_norm(w))
    if w_norm == 0:
        return math.nan
    along = float(torch.dot(u, w)) / w_norm
    perp = math.sqrt(max(float(torch.dot(u, u)) - along * along, 0.0))
    return math.atan2(perp, w_norm + along)


def equilibrium_angle(lr: float, momentum: float, weight_decay: float) -> float:
    """Wan et al.'s equilibrium angular update per step of a scale-invariant weight, sqrt(2 eta lambda/(1 + alpha))
    (NaN without weight decay: the norm then only grows and the angular update decays)."""
    return math.sqrt(2 * lr * weight_decay / (1 + momentum)) if weight_decay > 0 else math.nan
