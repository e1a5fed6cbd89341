"""analysis/: claims C13 and C14 and the curvature figures (issue 24) on synthetic results.

The results are written in the real layout and schemas: `trials` rows through bnsweep's own make_config and
trials_table, `spectrum` and `sharpness` rows in bnsweep.schema.PROBE_SCHEMAS, with knobs that make each claim hold,
fail where the paper's effect is absent, or lack what it needs. Seconds for the whole file.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest

from analysis import Thresholds, check_claims, load
from analysis.claims import CONTRADICTED, NO_DATA, SUPPORTED, claims_table
from analysis.commands import build_all
from bnsweep import records
from bnsweep.config import make_config
from bnsweep.records import trials_table
from bnsweep.schema import PROBE_SCHEMAS

VGG = {"arch": "vgg11", "width": 0.125, "dataset": "fashion-mnist", "steps": 600, "probes": "spectrum"}
MLP = {"arch": "mlp", "width": 0.25, "depth": 4, "dataset": "fashion-mnist", "loss": "mse", "train_subset": 1000,
       "steps": 800, "probes": "sharpness"}


def write_trial(root: Path, config: dict, tables: dict[str, list[dict]], trained: bool = True) -> str:
    """One finished trial (trained, or diverged at chance) with the given probe rows."""
    c = make_config(config)
    outcome = {"trial_id": c.trial_id, "status": "completed" if trained else "diverged", "trained": trained,
               "trained_rule": "final_train_acc >= 0.5", "steps_done": c.steps, "task": "classification",
               "initial_loss": 2.3, "final_loss": 0.3 if trained else 1e9, "final_train_acc": 0.9 if trained else 0.1,
               "final_test_acc": 0.85 if trained else 0.1, "attempt": 1, "schema_version": records.SCHEMA_VERSION}
    data = {name: pa.Table.from_pylist([{"trial_id": c.trial_id, **r} for r in rows], schema=PROBE_SCHEMAS[name])
            for name, rows in tables.items()}
    records.write_trial(root, c.trial_id, {**data, records.TRIALS: trials_table(c, outcome)})
    return c.trial_id


def claim(root: Path, key: str, thresholds: Thresholds | None = None):
    (found,) = [c for c in check_claims(load(root), thresholds) if c.key == key]
    return found


# -- C13: outliers relative to the bulk -------------------------------------------------------------------------

def spectrum_rows(lr: float, top: float, edge: float | None, outliers: int | None, steps=(0, 150, 300)) -> list[dict]:
    """The whole network's row (layer 0) and one layer's at each step: a bulk on [-0.1, edge] and top above."""
    rows = []
    for step in steps:
        nodes = [-0.1, 0.2, 0.5, edge if edge is not None else 1.0, top]
        for layer, block, params in ((0, "all", 150_000), (1, "features.0.layer", 80)):
            rows.append({"step": step, "layer": layer, "block": block, "params": params,
                         "top_eigenvalues": [top, top / 2, 1.0], "top": top, "bottom": -0.1, "trace": 10.0,
                         "trace_se": 1.0, "slq_nodes": nodes, "slq_weights": [0.3, 0.3, 0.2, 0.19, 0.01],
                         "bulk_edge": edge if layer == 0 else None, "outliers": outliers if layer == 0 else None,
                         "outlier_rule": "> bulk_edge (largest SLQ node with weight >= 10/params in its run)",
                         "two_over_lr": 2 / lr, "loss": 0.5})
    return rows


def write_spectra(root: Path, variants: dict[str, tuple], lrs=(0.025, 0.1), seed: int = 0,
                  trained: dict[str, bool] | None = None) -> Path:
    """Each variant at each rate with (top, bulk_edge, outliers) of its whole network at every probed step."""
    for norm, (top, edge, outliers) in variants.items():
        for lr in lrs:
            write_trial(root, {**VGG, "norm": norm, "lr": lr, "seed": seed},
                        {"spectrum": spectrum_rows(lr, top, edge, outliers)}, (trained or {}).get(norm, True))
    return root


PAPER = {"none": (60.0, 1.5, 4), "batch": (6.0, 1.5, 0), "layer": (20.0, 1.5, 2)}


def test_c13_supported_where_batchnorm_has_no_outliers(tmp_path):
    c13 = claim(write_spectra(tmp_path, PAPER), "C13")
    assert c13.verdict == SUPPORTED and len(c13.cases) == 2, c13.summary
    case = c13.cases[0]
    assert case["median_separation"] == {"batch": pytest.approx(4.0), "layer": pytest.approx(40 / 3),
                                         "none": pytest.approx(40.0)}
    assert case["steps"] == [150, 300]  # after initialization
    assert case["eta_top"]["none"] == pytest.approx(0.025 * 60)
    assert "top/bulk 4 vs none 40, outliers 0 vs 4; layer top/bulk 13.3 (not judged)" in c13.summary


def test_c13_contradicted_where_the_effect_is_absent(tmp_path):
    c13 = claim(write_spectra(tmp_path, {"none": (60.0, 1.5, 4), "batch": (60.0, 1.5, 4)}), "C13")
    assert c13.verdict == CONTRADICTED and all(c["verdict"] == CONTRADICTED for c in c13.cases), c13.summary
    # Fewer outliers alone is not enough: the top must stand less far above the bulk too.
    c13 = claim(write_spectra(tmp_path / "b", {"none": (60.0, 1.5, 4), "batch": (90.0, 1.5, 2)}), "C13")
    assert c13.verdict == CONTRADICTED


def test_c13_not_enough_data(tmp_path):
    assert claim(write_spectra(tmp_path / "a", {"none": (60.0, 1.5, 4)}), "C13").verdict == NO_DATA
    # No bulk by the outlier rule (a block of too few parameters): no separation to compare.
    c13 = claim(write_spectra(tmp_path / "b", {"none": (60.0, None, None), "batch": (6.0, 1.5, 0)}), "C13")
    assert c13.verdict == NO_DATA and "no bulk edge for none" in c13.summary
    # none trains at neither rate: nothing is compared at a matched rate.
    c13 = claim(write_spectra(tmp_path / "c", PAPER, trained={"none": False}), "C13")
    assert c13.verdict == NO_DATA and "no spectrum rows of none and batch at a rate both train" in c13.summary
    # Only the initial network: the outliers the paper sees appear in training.
    root = tmp_path / "d"
    for norm, (top, edge, outliers) in PAPER.items():
        write_trial(root, {**VGG, "norm": norm, "lr": 0.1}, {"spectrum": spectrum_rows(0.1, top, edge, outliers,
                                                                                      steps=(0,))})
    c13 = claim(root, "C13")
    assert c13.verdict == NO_DATA and "only the initial network" in c13.summary
    # A results directory without the table (another sweep's).
    write_trial(tmp_path / "e", {**VGG, "norm": "batch", "lr": 0.1, "probes": "layer_norms"}, {})
    assert claim(tmp_path / "e", "C13").verdict == NO_DATA


def test_c13_is_judged_per_seed(tmp_path):
    for seed in (0, 1):
        write_spectra(tmp_path, PAPER, seed=seed)
    write_spectra(tmp_path, {"none": (60.0, 1.5, 4), "batch": (60.0, 1.5, 4)}, seed=2)
    c13 = claim(tmp_path, "C13")
    assert c13.seed_verdicts == {0: SUPPORTED, 1: SUPPORTED, 2: CONTRADICTED}
    assert c13.verdict_text() == "supported, 2 of 3 seeds"


def test_c13_threshold_is_printed_with_its_source(tmp_path):
    write_spectra(tmp_path, PAPER)
    text = claims_table(check_claims(load(tmp_path)), Thresholds())
    assert "spectrum_ratio_factor = 1: C13" in text and "Ghorbani" in text
    # A stricter factor (batch's separation ten times below none's) is not met by 4 against 40.
    assert claim(tmp_path, "C13", Thresholds(spectrum_ratio_factor=10.0)).verdict == CONTRADICTED


# -- C14: the edge of stochastic stability ----------------------------------------------------------------------

STEPS = (0, 100, 200, 300, 400, 500, 600, 700)
RISE = (0.2, 0.5, 0.8, 0.97, 1.02, 0.98, 1.01, 0.99)  # batch sharpness / (2/lr): progressive sharpening, then hover


def sharpness_rows(lr: float, batch: int, batch_ratio=RISE, full_ratio: float | tuple = 0.6,
                   examples: int = 1000) -> list[dict]:
    limit = 2 / lr
    fulls = full_ratio if isinstance(full_ratio, tuple) else (full_ratio,) * len(STEPS)
    return [{"step": s, "sharpness": f * limit, "min_eigenvalue": -0.1, "residual": 1e-4, "iters": 20,
             "two_over_lr": limit, "eos_threshold": limit, "lr_sharpness": lr * f * limit, "loss": 0.1,
             "examples": examples, "ghost_batch": 0, "noise_in_probes": "none", "batch_sharpness": b * limit,
             "batch_sharpness_batches": 4, "batch_sharpness_se": 0.1}
            for s, b, f in zip(STEPS, batch_ratio, fulls, strict=True)]


def write_sgd(root: Path, full_by_batch: dict[int, float], lr: float = 0.1, norm: str = "none", seed: int = 0,
              **kw) -> Path:
    for batch, full in full_by_batch.items():
        write_trial(root, {**MLP, "norm": norm, "lr": lr, "batch_size": batch, "seed": seed},
                    {"sharpness": sharpness_rows(lr, batch, full_ratio=full, **kw)})
    return root


def test_c14_supported_batch_sharpness_at_the_limit_full_below_gap_widening(tmp_path):
    c14 = claim(write_sgd(tmp_path, {16: 0.5, 64: 0.7, 256: 0.85}), "C14")
    assert c14.verdict == SUPPORTED, c14.summary
    hover = [c for c in c14.cases if c["part"] == "hover"]
    assert len(hover) == 3 and all(c["reached_step"] == 300 for c in hover)  # 0.97 x 2/lr: at eoss_reach 0.95
    (gap,) = [c for c in c14.cases if c["part"] == "gap"]
    # From step 300 the batch sharpness's median is 0.99 x 2/lr: the gaps are 0.99 less the full-batch ratio.
    assert gap["gap_by_batch_size"] == {16: pytest.approx(0.49), 64: pytest.approx(0.29), 256: pytest.approx(0.14)}
    assert "gap / (2/lr) batch 16 0.49, batch 64 0.29, batch 256 0.14" in c14.summary
    assert "batch sharpness 0.99 x 2/lr, full-batch 0.7 x" in c14.summary


def test_c14_contradicted_where_the_effect_is_absent(tmp_path):
    # The full-batch sharpness sits at 2/lr with the batch sharpness (gradient descent's edge, not SGD's).
    c14 = claim(write_sgd(tmp_path / "a", {16: 1.0, 64: 1.0}), "C14")
    assert c14.verdict == CONTRADICTED and "full-batch 1 x" in c14.summary
    # Below the limit, but the gap narrows as the batch shrinks.
    c14 = claim(write_sgd(tmp_path / "b", {16: 0.8, 64: 0.5}), "C14")
    assert c14.verdict == CONTRADICTED and "gap contradicted" in c14.summary
    # The batch sharpness settles far above 2/lr (no self-stabilization at the limit).
    above = (0.2, 0.6, 1.0, 1.6, 1.7, 1.6, 1.7, 1.6)
    c14 = claim(write_sgd(tmp_path / "c", {16: 0.5, 64: 0.7}, batch_ratio=above), "C14")
    assert c14.verdict == CONTRADICTED and "hover contradicted" in c14.summary


def test_c14_not_enough_data(tmp_path):
    # Batch sharpness never reaches 2/lr: the rate is too low for the regime (the authors' README).
    low = tuple(r / 2 for r in RISE)
    c14 = claim(write_sgd(tmp_path / "a", {16: 0.3, 64: 0.4}, batch_ratio=low), "C14")
    assert c14.verdict == NO_DATA and "never reached 2/lr (max 0.51 x): not in the regime" in c14.summary
    # A catapult: above the limit at initialization, below it from then on.
    c14 = claim(write_sgd(tmp_path / "f", {16: 0.3}, batch_ratio=(1.5, *low[1:])), "C14")
    assert "started at 1.50 x 2/lr, fell below it by step 100 and never reached it again" in c14.summary
    # The probe measured the step's minibatch, not the full batch: no full-batch sharpness to judge.
    c14 = claim(write_sgd(tmp_path / "b", {16: 0.5, 64: 0.7}, examples=16), "C14")
    assert c14.verdict == NO_DATA and "full-batch sharpness not measured" in c14.summary
    # One batch size: the gap cannot widen or narrow.
    c14 = claim(write_sgd(tmp_path / "c", {16: 0.5}), "C14")
    assert c14.verdict == NO_DATA and "gap at one batch size" in c14.summary
    # Full-batch gradient descent only (C10's): no SGD trial.
    write_trial(tmp_path / "d", {**MLP, "norm": "none", "lr": 0.1, "batch_size": 0},
                {"sharpness": sharpness_rows(0.1, 0, full_ratio=1.0)})
    assert "no SGD trial" in claim(tmp_path / "d", "C14").summary


def test_c14_is_judged_per_seed(tmp_path):
    write_sgd(tmp_path, {16: 0.5, 64: 0.7}, seed=0)
    write_sgd(tmp_path, {16: 0.5, 64: 0.7}, seed=1)
    write_sgd(tmp_path, {16: 0.8, 64: 0.5}, seed=2)
    c14 = claim(tmp_path, "C14")
    assert c14.seed_verdicts == {0: SUPPORTED, 1: SUPPORTED, 2: CONTRADICTED}
    assert c14.verdict_text() == "supported, 2 of 3 seeds"


# -- the figures -------------------------------------------------------------------------------------------------

def test_curvature_figures_draw_from_their_tables(tmp_path):
    write_spectra(tmp_path, PAPER)
    write_sgd(tmp_path, {16: 0.5, 64: 0.7})
    drawn = {d.figure.name: d for d in build_all(load(tmp_path), validate=True)}
    density = drawn["fig_spectrum_density"].spec
    values = density["datasets"][next(iter(density["datasets"]))]
    assert {v["norm"] for v in values} == {"none", "batch", "layer"} and {v["step"] for v in values} == {0, 150, 300}
    assert all(v["density"] > 0 for v in values)  # a log axis: no zeros drawn
    assert density["spec"]["encoding"]["y"]["scale"]["type"] == "log"
    sharp = drawn["fig_batch_sharpness"].spec
    rows = sharp["datasets"][next(iter(sharp["datasets"]))]
    assert {r["kind"] for r in rows} == {"batch sharpness", "full-batch sharpness", "2/lr"}
    assert {r["batch"] for r in rows} == {"batch 16", "batch 64"}


def test_curvature_figures_are_left_out_without_their_data(tmp_path):
    # Full-batch gradient descent only: the eos sweep's figure, not this one; no spectrum table at all.
    write_trial(tmp_path, {**MLP, "norm": "none", "lr": 0.1, "batch_size": 0},
                {"sharpness": sharpness_rows(0.1, 0, full_ratio=1.0)})
    names = {d.figure.name for d in build_all(load(tmp_path))}
    assert "fig_edge_of_stability" in names
    assert not {"fig_spectrum_density", "fig_batch_sharpness"} & names
    # Under SGD without a full-batch measurement the legend says what was measured.
    write_sgd(tmp_path / "b", {16: 0.5}, examples=16)
    (fig,) = [d for d in build_all(load(tmp_path / "b")) if d.figure.name == "fig_batch_sharpness"]
    rows = fig.spec["datasets"][next(iter(fig.spec["datasets"]))]
    assert "sharpness of the step's minibatch" in {r["kind"] for r in rows}
    assert not math.isnan(rows[0]["value"])
