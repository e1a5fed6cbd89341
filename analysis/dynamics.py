"""Numbers of the dynamics measurements (edge of stability, scale invariance, gradients at initialization) from
the Parquet tables alone: the fits and summaries the figures and claims C10..C12 share."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def growth_factor(layers: Sequence[float], grad_norms: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of log |dL/dW_l| = a + b l over layer index l (1 = the input's layer). The growth factor
    per layer towards the input is exp(-b): above 1 the gradient grows from the output to the input (Yang et
    al.'s explosion). Also the fit's r2 and the number of layers used (non-finite or non-positive norms are
    left out). NaN with fewer than two usable layers."""
    x, y = np.asarray(layers, dtype=float), np.asarray(grad_norms, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
    x, y = x[keep], np.log(y[keep])
    out = {"factor": math.nan, "slope": math.nan, "intercept": math.nan, "r2": math.nan, "layers": int(len(x))}
    if len(x) < 2 or np.ptp(x) == 0:
        return out
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else math.nan
    return {**out, "factor": float(math.exp(-slope)), "slope": float(slope), "intercept": float(intercept),
            "r2": r2}
