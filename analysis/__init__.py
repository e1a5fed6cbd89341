"""Figures and claim checks from bnsweep's Parquet results; reads only the tables, never the training code.

    import analysis
    results = analysis.load("results/lr_grid")        # tidy, typed DataFrames: results["curves"], ...
    chart = analysis.figures.fig_lr_robustness(results)  # an Altair chart per figure (analysis.FIGURES)
    claims = analysis.check_claims(results)            # verdicts for C1..C14, per seed and over seeds
    claims[0].verdict_text()                           # "supported, 3 of 3 seeds"; intervals: analysis.uncertainty
"""

# Importing these registers the claims C7..C14 and the figures beyond the paper.
from analysis import (  # noqa: F401
    claims_curvature,
    claims_dynamics,
    claims_resnets,
    figures,
    figures_curvature,
    figures_dynamics,
    figures_resnets,
)
from analysis.claims import Claim, Thresholds, check_claims
from analysis.figures import FIGURES, MissingData
from analysis.load import NORM_ORDER, AnalysisError, Results, load

__all__ = ["FIGURES", "NORM_ORDER", "AnalysisError", "Claim", "MissingData", "Results", "Thresholds",
           "check_claims", "figures", "load"]
