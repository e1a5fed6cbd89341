"""Uncertainty over seeds: a number's mean over seeds with its bootstrap confidence interval, and figure bands.

Seeds are the replicates. An interval resamples the per-seed values (scipy.stats.bootstrap, percentile method by
default, a fixed random seed so that rerunning `bnsweep check` prints the same intervals) and needs at least
`min_seeds` (3) of them: with fewer, an Estimate says "1 seed: no interval" or gives the two seeds' range, never
a width that would look like certainty. Rates (learning rates, brackets and their ratios) are summarized in log
space: the geometric mean, and the interval of the geometric mean.

How much an interval over few seeds promises: a percentile interval of the mean lies inside the range of the
values, and three values from a symmetric spread all fall on one side of its centre one time in four, so over
3 seeds a "95 %" interval covers the true mean about 75 % of the time; over 5 seeds about 85 %, over 10 about
90 %, over 20 or more about 93 % (measured on normal and log-normal draws; tests/test_uncertainty.py checks it).
No percentile interval over 3 seeds can do better (it cannot leave their range; a t interval could, by assuming
a normal spread): more seeds are the cure, and claims.json lists the per-seed values behind each interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Bootstrap:
    """How intervals over seeds are computed (recorded in claims.json)."""

    confidence: float = 0.95
    n_resamples: int = 9999
    method: str = "percentile"  # scipy.stats.bootstrap's: percentile, basic or BCa
    random_seed: int = 0
    min_seeds: int = 3  # fewer seeds: no interval

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "resampled": "seeds", "library": "scipy.stats.bootstrap"}


# Figure bands are drawn for thousands of points at once; 2,000 resamples put each end of a band within a few
# percent of its width of the 9,999-resample value, which no eye can tell apart.
FIGURE_BOOTSTRAP = Bootstrap(n_resamples=2000)


@dataclass(frozen=True)
class Estimate:
    """A number over seeds: its mean (geometric for a rate), interval, and why there is no interval."""

    value: float
    low: float | None
    high: float | None
    seeds: int
    log: bool
    values: tuple[float, ...] = field(default=())
    labels: tuple[int, ...] = field(default=())  # the seed of each value, when known
    note: str = ""  # why there is no interval ("1 seed", "2 seeds: range ..."), empty when there is one

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def text(self, brief: bool = False) -> str:
        """'0.42 [0.39, 0.45]', or the value with the reason it has no interval. `brief` (a line of many
        numbers, whose reader was told the rule once): two seeds' range as '0.42 (0.40-0.44)', one seed's value
        alone."""
        if self.has_interval:
            return f"{_num(self.value)} [{_num(self.low)}, {_num(self.high)}]"
        finite = [v for v in self.values if math.isfinite(v)]
        if brief and self.seeds == 1:
            return _num(self.value)
        if brief and self.seeds == 2 and len(finite) == 2:
            return f"{_num(self.value)} ({_num(min(finite))}-{_num(max(finite))})"
        return f"{_num(self.value)} ({self.note})"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: no NaN (None) or infinity ("inf")."""
        return {"value": _safe(self.value), "low": _safe(self.low), "high": _safe(self.high), "seeds": self.seeds,
                "mean": "geometric" if self.log else "arithmetic", "note": self.note,
                "per_seed": ({str(k): _safe(v) for k, v in zip(self.labels, self.values, strict=True)} if self.labels
                             else [_safe(v) for v in self.values])}


def _safe(x: float | None) -> float | str | None:
    if x is None or math.isnan(x):
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _interval(matrix: np.ndarray, boot: Bootstrap) -> tuple[np.ndarray, np.ndarray]:
    """The interval of each row's mean of a (rows x seeds) matrix of finite values, in one vectorized call."""
    from scipy import stats  # here: scipy.stats takes a second to import, and only intervals need it

    rng = np.random.default_rng(boot.random_seed)
    with warnings.catch_warnings():
        # A row whose seeds agree exactly has a zero-width interval; scipy warns about it (and BCa gives NaN).
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        # batch bounds the memory: rows x batch x seeds floats at a time.
        batch = max(1, min(boot.n_resamples, 5_000_000 // max(1, matrix.size)))
        result = stats.bootstrap((matrix,), np.mean, axis=-1, vectorized=True, n_resamples=boot.n_resamples,
                                 confidence_level=boot.confidence, method=boot.method, batch=batch, rng=rng)
    low, high = (np.asarray(x, dtype=float) for x in result.confidence_interval)
    # A constant row: the interval is the value itself (BCa's NaN and rounding noise aside).
    constant = np.ptp(matrix, axis=-1) == 0
    low[constant] = high[constant] = matrix[constant, 0]
    return low, high


def estimate(values: Sequence[float | None] | Mapping[int, float | None], boot: Bootstrap,
             log: bool = False) -> Estimate:
    """The mean over seeds of one number (one value per seed, or {seed: value}; None: the seed has none) with its
    interval."""
    labels = tuple(int(k) for k in values) if isinstance(values, Mapping) else ()
    values = list(values.values()) if isinstance(values, Mapping) else values
    raw = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    n = len(raw)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(raw) if log else raw
    finite = np.isfinite(x)
    kept = tuple(float(v) for v in raw)
    if n == 0:
        return Estimate(math.nan, None, None, 0, log, kept, labels=labels, note="no seed")
    if not finite.all():
        # inf steps (never reached), an open bracket, no rate that trained: the mean has no interval.
        with np.errstate(invalid="ignore"):
            centre = float(np.mean(x))
        value = math.exp(centre) if log and not math.isnan(centre) else centre
        counts = {"no value": int(np.isnan(x).sum()), "not finite": int(np.isinf(x).sum())}
        what = ", ".join(f"{words} in {k} of {n} seeds" for words, k in counts.items() if k)
        return Estimate(value, None, None, n, log, kept, labels=labels, note=f"{what}: no interval")
    centre = float(np.mean(x))
    value = math.exp(centre) if log else centre
    if n < boot.min_seeds:
        note = "1 seed: no interval" if n == 1 else (
            f"{n} seeds: no interval, range {_num(float(raw.min()))}-{_num(float(raw.max()))}")
        return Estimate(value, None, None, n, log, kept, labels=labels, note=note)
    low, high = (float(v[0]) for v in _interval(x[None, :], boot))
    if log:
        low, high = math.exp(low), math.exp(high)
    return Estimate(value, low, high, n, log, kept, labels=labels)


def paired_ratio(top: dict[int, float | None], bottom: dict[int, float | None], boot: Bootstrap) -> Estimate:
    """The geometric mean over seeds of top[s] / bottom[s] for the seeds both have (resampling seeds keeps the
    pairs), with its interval."""
    seeds = sorted(set(top) & set(bottom))
    return estimate({s: top[s] / bottom[s] if top[s] and bottom[s] else None for s in seeds}, boot, log=True)


# -- figure bands -----------------------------------------------------------------------------------------------

def band_over_seeds(df: pd.DataFrame, value: str, by: Sequence[str], boot: Bootstrap = FIGURE_BOOTSTRAP,
                    band: bool = True) -> pd.DataFrame:
    """Mean of `value` over seeds (rows sharing `by`) with the seed count and a band `{value}_lo`..`{value}_hi`:
    the bootstrap interval of the mean with at least `boot.min_seeds` seeds, the min-max range with 2, none with
    1 (NaN: nothing drawn). Non-finite values are left out. `band=False` skips the bootstrap (means only)."""
    values = pd.to_numeric(df[value], errors="coerce").replace([np.inf, -np.inf], np.nan)
    frame = df[list(by)].assign(**{value: values})
    g = frame.groupby(list(by), observed=True)[value]
    out = g.agg(["mean", "min", "max", "count"]).reset_index()
    lo, hi = out["min"].to_numpy(dtype=float, copy=True), out["max"].to_numpy(dtype=float, copy=True)
    count = out["count"].to_numpy()
    lo[count < 2], hi[count < 2] = np.nan, np.nan
    wide = count >= boot.min_seeds
    if band and wide.any():
        # A (groups x seeds) matrix, NaN-padded; one vectorized bootstrap per seed count.
        kept = frame[values.notna().to_numpy()]
        group = frame.groupby(list(by), observed=True).ngroup().to_numpy()[values.notna().to_numpy()]
        rank = kept.groupby(list(by), observed=True).cumcount().to_numpy()
        matrix = np.full((len(out), int(count.max())), np.nan)
        matrix[group, rank] = kept[value].to_numpy(dtype=float)
        for n in np.unique(count[wide]):
            rows = np.flatnonzero(count == n)
            lo[rows], hi[rows] = _interval(matrix[rows, :n], boot)
    out["min"], out["max"] = lo, hi
    return out.rename(columns={"mean": value, "min": f"{value}_lo", "max": f"{value}_hi", "count": "seeds"})


def band_note(seed_counts: Iterable[int], boot: Bootstrap = FIGURE_BOOTSTRAP, short: bool = False) -> str:
    """The caption's sentence saying which band a figure draws, from the seed count of each of its points; `short`:
    a few words for a terminal line."""
    counts = sorted({int(n) for n in seed_counts if n > 0})
    if not counts:
        return ""
    span = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    per_point = f"{span} seed{'s' if counts[-1] > 1 else ''} per point"
    ci = f"{boot.confidence:.0%} CI"
    if short:
        kinds = [ci if counts[-1] >= boot.min_seeds else "", "min-max" if 2 in counts else "",
                 "none" if 1 in counts else ""]
        return f"band: {' / '.join(k for k in kinds if k)}, {per_point}"
    how = f"bootstrap, {boot.method}, {boot.n_resamples:,} resamples"
    if counts == [1]:
        return "One seed per point: no band; nothing here says how much another seed would differ."
    if counts == [2]:
        return "Band: the min-max range of the 2 seeds per point (no interval from 2 seeds)."
    if counts[0] >= boot.min_seeds:
        return f"Band: the {ci} of the mean over seeds ({how}), {per_point}."
    parts = []
    if counts[-1] >= boot.min_seeds:
        parts.append(f"the {ci} of the mean over seeds ({how}) where a point has {boot.min_seeds} seeds or more")
    if 2 in counts:
        parts.append("the min-max range where a point has 2 seeds")
    if 1 in counts:
        parts.append("none where it has 1")
    return f"Band: {', '.join(parts)} ({per_point})."
