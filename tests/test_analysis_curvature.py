"""analysis/: claims C13 and C14 and the curvature figures (issue 24) on synthetic results.

The results are written in the real layout: `trials` rows through bnsweep's own make_config and trials_table,
`spectrum` and `sharpness` rows in bnsweep.schema.PROBE_SCHEMAS, with knobs that make a claim hold, fail (the
paper's effect absent) or lack what it needs. Seconds for the whole file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from analysis import check_claims, load
from analysis.claims import CONTRADICTED, NO_DATA, SEEDS_DISAGREE, SUPPORTED
from analysis.claims_curvature import FULL_BATCH
from analysis.figures import EXTRA_FIGURES
from analysis.figures_curvature import DENSITY_FLOOR, DENSITY_POINTS
from bnsweep import records
from bnsweep.config import make_config
from bnsweep.records import trials_table
from bnsweep.schema import PROBE_SCHEMAS

VGG = {"arch": "vgg11", "width": 0.125, "dataset": "fashion-mnist", "steps": 400}
MLP = {"arch": "mlp", "width": 0.25, "depth": 4, "dataset": "fashion-mnist", "steps": 400, "train_subset": 1000,
       "loss": "mse"}
STEPS = (0, 100, 200, 300, 400)


def claim(root: Path, key: str):
    return next(c for c in check_claims(load(root)) if c.key == key)


def write_trial(root: Path, common: dict, norm: str, lr: float, tables: dict[str, list[dict]], seed: int = 0,
                batch_size: int = 128, trained: bool = True) -> str:
    """One finished trial with its probe rows (each row gets the trial's id)."""
    config = make_config({**common, "norm": norm, "lr": lr, "batch_size": batch_size, "seed": seed})
    outcome = {"trial_id": config.trial_id, "status": "completed", "trained": trained,
               "trained_rule": "final_train_acc >= 0.5", "steps_done": 400, "task": "classification",
               "initial_loss": 2.3, "final_loss": 0.5, "final_train_acc": 0.9 if trained else 0.1,
               "final_test_acc": 0.85 if trained else 0.1, "attempt": 1, "schema_version": records.SCHEMA_VERSION}
    out = {records.TRIALS: trials_table(config, outcome)}
    for name, rows in tables.items():
        rows = [{"trial_id": config.trial_id, **r} for r in rows]
        schema = PROBE_SCHEMAS[name]
        extra = [pa.field(k, pa.float64()) for k in rows[0] if k not in schema.names]
        out[name] = pa.Table.from_pylist(rows, schema=pa.schema([*schema, *extra]))
    records.write_trial(root, config.trial_id, out)
    return config.trial_id


# -- C13 ------------------------------------------------------------------------------------------------------

def spectrum_rows(top: float, edge: float, outliers: int, lr: float, steps=STEPS) -> list[dict]:
    """Whole-network spectra (layer 0) with the given top eigenvalue, bulk edge and outlier count at each step."""
    nodes = [-0.1, 0.0, edge * 0.5, edge, top]
    weights = [0.05, 0.6, 0.25, 0.0999, 0.0001]
    return [{"step": s, "layer": 0, "block": "all", "params": 10_000, "top_eigenvalues": [top, edge, edge * 0.9],
             "top": top, "bottom": -0.1, "trace": 100.0, "trace_se": 1.0, "slq_nodes": nodes,
             "slq_weights": weights, "bulk_edge": edge, "outliers": outliers,
             "outlier_rule": "> bulk_edge", "two_over_lr": 2 / lr, "loss": 1.0} for s in steps]


def write_spectra(root: Path, spectra: dict[str, tuple[float, float, int]], seed: int = 0, steps=STEPS,
                  lrs=(0.05, 0.1)) -> Path:
    for norm, (top, edge, outliers) in spectra.items():
        for lr in lrs:
            write_trial(root, VGG, norm, lr, {"spectrum": spectrum_rows(top, edge, outliers, lr, steps)}, seed)
    return root


def test_c13_supported_when_batchnorm_suppresses_the_outliers(tmp_path):
    c = claim(write_spectra(tmp_path, {"none": (60.0, 5.0, 3), "batch": (6.0, 5.0, 0), "layer": (20.0, 5.0, 1)}),
              "C13")
    assert c.verdict == SUPPORTED
    judged = [case for case in c.cases if case["verdict"] != NO_DATA]
    assert len(judged) == 2
    assert judged[0]["top_over_bulk_none"] == pytest.approx(12.0)
    assert judged[0]["top_over_bulk_batch"] == pytest.approx(1.2)
    assert judged[0]["top_over_bulk_layer"] == pytest.approx(4.0)  # reported, not judged
    assert "top/bulk 1.2 vs none 12" in c.summary


def test_c13_contradicted_where_the_effect_is_absent(tmp_path):
    """The same outliers with and without BatchNorm: the paper's effect is absent, the claim contradicted."""
    c = claim(write_spectra(tmp_path, {"none": (30.0, 5.0, 2), "batch": (30.0, 5.0, 2)}), "C13")
    assert c.verdict == CONTRADICTED
    more = claim(write_spectra(tmp_path / "b", {"none": (30.0, 5.0, 1), "batch": (10.0, 5.0, 3)}), "C13")
    assert more.verdict == CONTRADICTED  # a lower top but more outliers


def test_c13_not_enough_data(tmp_path):
    only_start = claim(write_spectra(tmp_path / "a", {"none": (60.0, 5.0, 3), "batch": (6.0, 5.0, 0)},
                                     steps=(0, 100)), "C13")
    assert only_start.verdict == NO_DATA  # one spectrum after step 0 (c13_min_probes is 2)
    assert "fewer than 2 spectra" in only_start.summary
    no_edge = claim(write_spectra(tmp_path / "b", {"none": (60.0, 0.0, 3), "batch": (6.0, 0.0, 0)}), "C13")
    assert no_edge.verdict == NO_DATA  # no positive bulk edge: no ratio
    untrained = tmp_path / "c"
    for norm in ("none", "batch"):
        write_trial(untrained, VGG, norm, 0.1, {"spectrum": spectrum_rows(6.0, 5.0, 0, 0.1)}, trained=False)
    assert claim(untrained, "C13").verdict == NO_DATA  # no rate where both train
    write_trial(tmp_path / "d", VGG, "batch", 0.1, {"sharpness": sharpness_rows(0.1, 1.0, 0.5)})
    assert claim(tmp_path / "d", "C13").summary.startswith("no spectrum table")


def test_c13_is_judged_per_seed(tmp_path):
    write_spectra(tmp_path, {"none": (60.0, 5.0, 3), "batch": (6.0, 5.0, 0)}, seed=0)
    write_spectra(tmp_path, {"none": (30.0, 5.0, 2), "batch": (30.0, 5.0, 2)}, seed=1)
    c = claim(tmp_path, "C13")
    assert c.seed_verdicts == {0: SUPPORTED, 1: CONTRADICTED}
    assert c.verdict == SEEDS_DISAGREE


# -- C14 ------------------------------------------------------------------------------------------------------

def sharpness_rows(lr: float, batch_ratio: float, full_ratio: float | None, minibatch_ratio: float = 2.0,
                   steps=tuple(range(0, 401, 50))) -> list[dict]:
    """SGD sharpness rows: batch sharpness rising to batch_ratio x 2/lr from step 100, the step's minibatch top
    eigenvalue at minibatch_ratio x 2/lr and, unless None, a full-batch sharpness at full_ratio x 2/lr."""
    limit = 2 / lr
    rows = []
    for s in steps:
        rise = min(1.0, 0.3 + s / 140)
        row = {"step": s, "sharpness": minibatch_ratio * limit * rise, "min_eigenvalue": -1.0, "residual": 1e-4,
               "iters": 20, "two_over_lr": limit, "eos_threshold": limit, "lr_sharpness": minibatch_ratio * 2 * rise,
               "loss": 0.3, "examples": 64, "ghost_batch": 0, "noise_in_probes": "reuse",
               "batch_sharpness": batch_ratio * limit * rise, "batch_sharpness_batches": 4,
               "batch_sharpness_se": 0.1}
        if full_ratio is not None:
            row[FULL_BATCH] = full_ratio * limit * rise
        rows.append(row)
    return rows


def write_sgd(root: Path, full: dict[int, float | None], batch_ratio: float = 1.0, lrs=(0.05, 0.1),
              norms=("none", "batch")) -> Path:
    """SGD trials at each batch size of `full` (its full-batch sharpness ratio, None: not measured)."""
    for norm in norms:
        for lr in lrs:
            for batch_size, ratio in full.items():
                write_trial(root, MLP, norm, lr, {"sharpness": sharpness_rows(lr, batch_ratio, ratio)},
                            batch_size=batch_size)
    return root


def test_c14_supported_when_batch_sharpness_hovers_and_the_gap_widens(tmp_path):
    c = claim(write_sgd(tmp_path, {16: 0.4, 64: 0.6, 256: 0.8}), "C14")
    assert c.verdict == SUPPORTED
    gaps = [case for case in c.cases if case["part"] == "gap"]
    assert len(gaps) == 4 and all(g["verdict"] == SUPPORTED for g in gaps)
    assert gaps[0]["gap_by_batch"][16] == pytest.approx(0.6)
    assert gaps[0]["gap_by_batch"][256] == pytest.approx(0.2)
    assert "batch sharpness median 1..1 x 2/lr" in c.summary


def test_c14_contradicted_where_the_effect_is_absent(tmp_path):
    """Full-batch sharpness at 2/lr and no gap at any batch size: SGD behaves like gradient descent."""
    same = claim(write_sgd(tmp_path / "a", {16: 1.0, 256: 1.0}), "C14")
    assert same.verdict == CONTRADICTED
    narrows = claim(write_sgd(tmp_path / "b", {16: 0.8, 256: 0.4}), "C14")  # the gap shrinks with the batch
    assert narrows.verdict == CONTRADICTED
    assert all(c["verdict"] == CONTRADICTED for c in narrows.cases if c["part"] == "gap")
    above = claim(write_sgd(tmp_path / "c", {16: 0.4, 256: 0.8}, batch_ratio=2.0), "C14")
    assert above.verdict == CONTRADICTED  # batch sharpness twice 2/lr: it does not hover there


def test_c14_not_enough_data(tmp_path):
    # Today's probe under SGD: the step's minibatch top eigenvalue, no full-batch sharpness.
    c = claim(write_sgd(tmp_path / "a", {16: None, 256: None}), "C14")
    assert c.verdict == NO_DATA
    assert "no full-batch sharpness" in c.summary
    one = claim(write_sgd(tmp_path / "b", {64: 0.5}), "C14")
    assert one.verdict == NO_DATA  # one batch size: the gap's widening is not judged
    low = claim(write_sgd(tmp_path / "c", {16: 0.4, 256: 0.8}, batch_ratio=0.5), "C14")
    assert low.verdict == NO_DATA and "never reached 2/lr" in low.summary
    # A catapult (batch at 0.1 on sgd_eos's cpu network): far above 2/lr at step 0, below it from then on.
    rows = sharpness_rows(0.1, 0.5, 0.4)
    rows[0]["batch_sharpness"] = 7.5 * 20
    write_trial(tmp_path / "e", MLP, "batch", 0.1, {"sharpness": rows}, batch_size=16)
    catapult = claim(tmp_path / "e", "C14")
    assert catapult.verdict == NO_DATA
    assert "started at 7.5 x 2/lr, fell below it by step 50 and never reached it again" in catapult.summary
    full_batch_only = tmp_path / "d"
    write_trial(full_batch_only, MLP, "batch", 0.1, {"sharpness": sharpness_rows(0.1, 1.0, 1.0)}, batch_size=0)
    assert claim(full_batch_only, "C14").verdict == NO_DATA  # gradient descent is C10's


def test_c14_is_judged_per_seed(tmp_path):
    for seed, full in ((0, {16: 0.4, 256: 0.8}), (1, {16: 0.4, 256: 0.8}), (2, {16: 1.0, 256: 1.0})):
        for batch_size, ratio in full.items():
            write_trial(tmp_path, MLP, "batch", 0.1, {"sharpness": sharpness_rows(0.1, 1.0, ratio)}, seed=seed,
                        batch_size=batch_size)
    c = claim(tmp_path, "C14")
    assert c.seed_verdicts == {0: SUPPORTED, 1: SUPPORTED, 2: CONTRADICTED}
    assert c.verdict == SUPPORTED  # 2 of 3 seeds


# -- figures ------------------------------------------------------------------------------------------------------

def test_curvature_figures_draw_from_synthetic_tables(tmp_path):
    write_spectra(tmp_path, {"none": (60.0, 5.0, 3), "batch": (6.0, 5.0, 0)})
    write_sgd(tmp_path, {16: 0.4, 256: None})
    results = load(tmp_path)
    figures = {f.name: f for f in EXTRA_FIGURES}
    density = figures["fig_spectrum_density"].build(results).to_dict()
    assert density["spec"]["encoding"]["y"]["scale"]["type"] == "log"
    rows = density["datasets"][next(iter(density["datasets"]))]
    assert sorted({r["step"] for r in rows}) == [0, 200, 400]
    # Every grid point drawn, the gaps between the nodes' bumps on the floor: no line joins a gap's two sides.
    per_line = pd.DataFrame(rows).groupby(["norm", "lr_label", "step"]).size()
    assert (per_line == DENSITY_POINTS).all() and min(r["density"] for r in rows) == DENSITY_FLOOR
    sharp = figures["fig_batch_sharpness"].build(results).to_dict()
    series = {r["series"] for r in sharp["datasets"][next(iter(sharp["datasets"]))]}
    assert {"batch sharpness g'Hg/|g|^2", "full-batch sharpness", "2/lr"} <= series
