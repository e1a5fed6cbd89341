"""analysis/: claims C7..C9 and the figures of the residual networks and the batch-size axis (issue 13).

The results sets are synthetic but written in the real layout and schemas: `trials` rows through bnsweep's own
make_config and trials_table, `boundaries` rows in bnsweep.schema.BOUNDARIES_SCHEMA, each with knobs that make a
claim hold, fail or lack what it needs. Only `trials` and `boundaries` are written: seconds for the whole file.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from analysis import Thresholds, aggregate, check_claims, critical_lr, load
from analysis.claims import CONTRADICTED, NO_DATA, SUPPORTED, Context, claims_table
from analysis.claims_resnets import Critical, Span, critical_rates
from analysis.commands import build_all, check
from bnsweep import records
from bnsweep.bench.figures import FakeTrial, write_fake_trial
from bnsweep.config import make_config
from bnsweep.records import trials_table
from bnsweep.schema import BOUNDARIES_SCHEMA

GRID = (0.025, 0.1, 0.4, 1.6, 6.4)  # resnet_lr's cpu grid
COMMON = {"arch": "resnet20", "width": 0.25, "dataset": "fashion-mnist", "steps": 100}


def write_trial(root: Path, norm: str, lr: float, trained: bool, acc: float | None = None, batch_size: int = 128,
                seed: int = 0, status: str | None = None, ghost_batch: int | None = None) -> None:
    """One finished resnet20 trial: trained at `acc` (default 0.85), or diverged at chance (status: say
    'completed' for a stable trial that did not reach the trained accuracy)."""
    config = make_config({**COMMON, "norm": norm, "lr": lr, "batch_size": batch_size, "seed": seed,
                          "ghost_batch": ghost_batch})
    acc = (0.85 if trained else 0.1) if acc is None else acc
    status = status or ("completed" if trained else "diverged")
    outcome = {"trial_id": config.trial_id, "status": status, "trained": trained,
               "trained_rule": "final_train_acc >= 0.5", "steps_done": 100, "task": "classification",
               "initial_loss": 2.3, "final_loss": 0.5 if trained else 1e9, "final_train_acc": acc + 0.02,
               "final_test_acc": acc, "attempt": 1, "schema_version": records.SCHEMA_VERSION}
    records.write_trial(root, config.trial_id, {records.TRIALS: trials_table(config, outcome)})


def write_grid(root: Path, largest: dict[str, float], batch_size: int = 128) -> Path:
    """Every variant of `largest` on GRID, training at every rate up to its entry there (0: at none)."""
    for norm, top in largest.items():
        for lr in GRID:
            write_trial(root, norm, lr, lr <= top, batch_size=batch_size)
    return root


def write_bracket(root: Path, norm: str, lower: float | None, upper: float | None, batch_size: int,
                  seeds: int = 1) -> None:
    """A `boundaries` row over seeds for resnet20 at one batch size, in the real schema."""
    row = dict.fromkeys(BOUNDARIES_SCHEMA.names)
    cell_id = f"resnet20-{norm}-{batch_size}"
    row.update(sweep="batch_size", scale="cpu", cell_id=cell_id, all_seeds=True, arch="resnet20", norm=norm,
               width=0.25, dataset="fashion-mnist", seed=-1, seeds=seeds, steps=100, batch_size=batch_size,
               curvature=1.0, cell=json.dumps({"norm": norm, "batch_size": batch_size}), lower=lower, upper=upper,
               ratio=upper / lower if lower and upper else None, lower_min=lower, upper_max=upper, trials_used=6,
               rounds=2, monotone=True, failed_below=0, converged=True, budget_exhausted=False, target_ratio=2.0,
               budget=6, fixed_grid_trials=4)
    records.write_table(str(root), "boundaries", cell_id, pa.Table.from_pylist([row], schema=BOUNDARIES_SCHEMA))


def claim(root: Path, key: str, thresholds: Thresholds | None = None):
    (found,) = [c for c in check_claims(load(root), thresholds) if c.key == key]
    return found


# -- ranges of critical rates -----------------------------------------------------------------------------------

def test_spans_of_open_brackets():
    closed, open_up = Critical(0.4, 1.6, "grid").span, Critical(0.4, None, "grid").span
    assert closed.point == pytest.approx(0.8) and open_up == Span(0.4, float("inf"))
    assert Critical(None, 0.1, "grid").span == Span(0.0, 0.1)
    ratio = open_up / closed  # at least 0.5, unbounded above
    assert ratio.low == pytest.approx(0.5) and ratio.high == float("inf")
    assert ratio.at_least(0.25) is True and ratio.at_least(1.0) is None and ratio.at_most(0.4) is False


# -- C7: normalizer-free training -------------------------------------------------------------------------------

NF_TRAIN = {"none": 0.1, "batch": 1.6, "fixup": 1.6, "skipinit": 1.6, "nf": 0.4}


@pytest.mark.parametrize("largest, verdict, words", [
    # none diverges from 0.4; every normalizer-free variant is stable there and matches batch's accuracy at 0.1.
    (NF_TRAIN, SUPPORTED, "fixup (batch 128): fixup stable to 1.6, diverges from 6.4, none stable to 0.1, "
                          "diverges from 0.4, accuracy at lr 0.1 0.85 vs batch 0.85"),
    # nf diverges where none does: the paper's effect is absent.
    ({**NF_TRAIN, "nf": 0.1}, CONTRADICTED, "nf stable to 0.1, diverges from 0.4, none stable to 0.1"),
    # none is stable at every rate of the grid, and so is everything else: where they diverge is unknown.
    (dict.fromkeys(NF_TRAIN, 6.4), NO_DATA, "none diverges at no rate tried"),
    # ... but where none is stable above fixup's divergence, fixup is not stable where none diverges.
    ({**NF_TRAIN, "none": 6.4}, CONTRADICTED, "fixup stable to 1.6, diverges from 6.4, none stable to 6.4"),
])
def test_c7_from_the_grid(tmp_path, largest, verdict, words):
    c7 = claim(write_grid(tmp_path, largest), "C7")
    assert c7.verdict == verdict and words in c7.summary, c7.summary
    assert {c["norm"] for c in c7.cases} == {"fixup", "skipinit", "nf"}
    assert all(c["source"] == "grid" and c["batch_size"] == 128 for c in c7.cases)
    assert "critical-rate ratio" in " ".join(c7.cases[0]["numbers"])  # reported, not judged


def test_c7_trainability_at_the_moderate_rate(tmp_path):
    # skipinit is stable where none diverges, but at lr 0.1 reaches 0.6 where batch reaches 0.85.
    write_grid(tmp_path, {k: v for k, v in NF_TRAIN.items() if k != "skipinit"})
    for lr in GRID:
        write_trial(tmp_path, "skipinit", lr, lr <= 1.6, acc=0.6 if lr <= 1.6 else None)
    c7 = claim(tmp_path, "C7")
    (skipinit,) = [c for c in c7.cases if c["norm"] == "skipinit"]
    assert skipinit["verdict"] == CONTRADICTED and "accuracy at lr 0.1 0.6 vs batch 0.85" in skipinit["why"]
    looser = claim(tmp_path, "C7", Thresholds(nf_acc_gap=0.3))
    assert [c["verdict"] for c in looser.cases if c["norm"] == "skipinit"] == [SUPPORTED]


def test_c7_stability_from_divergence_not_from_training(tmp_path):
    # fixup reaches the trained accuracy only up to 0.1 within the budget, yet does not diverge up to 1.6, where
    # none diverges from 0.4. Read from `trained` (the old rule) fixup and none fail alike: contradicted.
    write_grid(tmp_path, {"none": 0.1, "batch": 1.6})
    for lr in GRID:
        write_trial(tmp_path, "fixup", lr, lr <= 0.1, status="completed" if lr <= 1.6 else "diverged")
    (case,) = claim(tmp_path, "C7").cases
    assert case["verdict"] == SUPPORTED and "fixup stable to 1.6, diverges from 6.4" in case["why"]


def test_c7_a_variant_that_trains_nowhere_is_a_budget_problem(tmp_path):
    # fixup never diverges and never trains: the budget was too short to tell, not a contradiction.
    write_grid(tmp_path, {"none": 0.1, "batch": 1.6})
    for lr in GRID:
        write_trial(tmp_path, "fixup", lr, False, status="completed")
    c7 = claim(tmp_path, "C7")
    assert c7.verdict == NO_DATA and "not enough data (budget)" in c7.summary, c7.summary
    assert c7.cases[0]["budget"] is True


@pytest.mark.parametrize("scale", ["paper", "cpu", "smoke"])
def test_resnet_lr_trains_as_the_normalizer_free_papers_do(scale):
    # Momentum 0.9 (the Fixup authors' cifar_train.py), and C7's moderate rate in every variant's grid.
    from bnsweep.sweep import load as load_sweep

    sweep = load_sweep("resnet_lr", scale)
    assert {c.momentum for c in sweep.configs} == {0.9}
    for norm in ("batch", "fixup", "skipinit", "nf"):
        assert Thresholds().nf_moderate_lr in {c.lr for c in sweep.configs if c.norm == norm}


def test_c7_without_normalizer_free_variants(tmp_path):
    c7 = claim(write_grid(tmp_path, {"none": 0.1, "batch": 1.6}), "C7")
    assert c7.verdict == NO_DATA and "no fixup, skipinit or nf trials" in c7.summary


# -- C8: BatchNorm's advantage grows with the batch size ---------------------------------------------------------

def search(root: Path, none: dict, batch: dict) -> Path:
    """A batch-size search's brackets, {batch size: (lower, upper)} per variant, and a trial per cell."""
    for norm, brackets in (("none", none), ("batch", batch)):
        for size, (lower, upper) in brackets.items():
            write_bracket(root, norm, lower, upper, size)
            write_trial(root, norm, lower or upper, lower is not None, batch_size=size)
    return root


NONE = {16: (0.2, 0.4), 64: (0.2, 0.4), 256: (0.2, 0.4)}
RATES = (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


def peak(optimum: float, best: float, largest: float = 1.6) -> dict[float, float | None]:
    """Accuracy over RATES peaking at `optimum` (0.02 lower per factor 2 away), None (diverged) above `largest`."""
    return {lr: None if lr > largest else best - 0.02 * abs(math.log2(lr / optimum)) for lr in RATES}


def optimal_grid(root: Path, curves: dict[str, dict[int, dict[float, float | None]]], seeds: int = 1) -> Path:
    """An optimal_lr-like grid: {norm: {batch size: {lr: final test accuracy, None: diverged}}}."""
    for norm, by_size in curves.items():
        for size, by_lr in by_size.items():
            for lr, acc in by_lr.items():
                for seed in range(seeds):
                    write_trial(root, norm, lr, acc is not None, acc=None if acc is None else acc + 0.001 * seed,
                                batch_size=size, seed=seed)
    return root


# The paper's picture: batch trains at 16x skipinit's largest rate at every batch size, yet at batch 16 both are
# best at 0.05; at 256 batch is best at 0.8 and 0.04 more accurate.
PAPER = {"batch": {16: peak(0.05, 0.86), 256: peak(0.8, 0.88)},
         "skipinit": {16: peak(0.05, 0.855, largest=0.1), 256: peak(0.1, 0.84, largest=0.1)}}


def test_c8_judges_optimal_rates_not_critical_rates(tmp_path):
    """Fails with the old rule (batch's critical rate over none's, small at small batch): here the critical-rate
    ratio is 16 at every batch size, which the old rule called contradicted; the paper's claim is about optimal
    rates, and those are alike at batch 16 and 8x apart at 256."""
    curves = {**PAPER, "none": {16: peak(0.05, 0.85, largest=0.1), 256: peak(0.1, 0.83, largest=0.1)}}
    c8 = claim(optimal_grid(tmp_path, curves), "C8")
    assert c8.verdict == SUPPORTED, c8.summary
    assert "batch 16: batch 0.860 at lr 0.05, skipinit 0.855 at lr 0.05, optimal-rate ratio 1, gap +0.005" in c8.summary
    assert "batch 256: batch 0.880 at lr 0.8, skipinit 0.840 at lr 0.1, optimal-rate ratio 8, gap +0.040" in c8.summary
    assert "(critical-rate ratio 16, not judged)" in c8.summary  # sqrt(1.6 x 3.2) / sqrt(0.1 x 0.2)
    (case,) = c8.cases
    assert case["batch_sizes"] == [16, 256] and case["source"] == "grid"
    assert case["numbers"]["batch/skipinit optimal-rate ratio at batch 256"] == pytest.approx(8.0)
    assert case["numbers"]["batch/skipinit critical-rate ratio at batch 16"] == pytest.approx(16.0)
    assert "optimal_rate_similar" in c8.statement or "factor 2" in c8.statement


@pytest.mark.parametrize("change, verdict, words", [
    # The effect absent: at 256 too, batch is best where skipinit is, and no more accurate.
    ({"batch": {256: peak(0.1, 0.845)}}, CONTRADICTED, "batch 256: batch 0.845 at lr 0.1, skipinit 0.840"),
    # At batch 16 batch's optimum is 4x skipinit's: not "similar optimal rates".
    ({"batch": {16: peak(0.2, 0.86)}}, CONTRADICTED, "optimal-rate ratio 4, gap +0.005"),
    # At batch 16 batch is 0.05 more accurate: more than a minimal benefit.
    ({"batch": {16: peak(0.05, 0.905)}}, CONTRADICTED, "gap +0.050"),
    # A better accuracy alone (same optimal rate) shows the benefit at 256.
    ({"batch": {256: peak(0.1, 0.88)}}, SUPPORTED, "optimal-rate ratio 1, gap +0.040"),
    # batch's optimum at the top of 256's grid: its ratio is at least 32, a range that decides it anyway.
    ({"batch": {256: peak(3.2, 0.88, largest=3.2)}}, SUPPORTED, "0.880 at lr 3.2 (the grid's top)"),
    # Both best at the bottom of batch 16's grid: either optimum may lie lower, their ratio is unknown.
    ({"batch": {16: peak(0.003, 0.86)}, "skipinit": {16: peak(0.003, 0.855, largest=0.1)}}, NO_DATA,
     "the grid's bottom"),
    # skipinit trains at no rate at 256 within the budget.
    ({"skipinit": {256: dict.fromkeys(RATES)}}, NO_DATA, "skipinit trains at no rate of the grid (budget)"),
])
def test_c8_cases(tmp_path, change, verdict, words):
    curves = {norm: {**by_size, **change.get(norm, {})} for norm, by_size in PAPER.items()}
    c8 = claim(optimal_grid(tmp_path, curves), "C8")
    assert c8.verdict == verdict and words in c8.summary, c8.summary


def test_c8_per_seed(tmp_path):
    c8 = claim(optimal_grid(tmp_path, PAPER, seeds=2), "C8")
    assert c8.verdict_text() == "supported, 2 of 2 seeds"
    (case,) = c8.cases
    assert case["over_seeds"]["batch/skipinit optimal-rate ratio at batch 256"].seeds == 2


def test_c8_needs_a_grid_at_two_batch_sizes(tmp_path):
    one = claim(optimal_grid(tmp_path / "one", {n: {16: c[16]} for n, c in PAPER.items()}), "C8")
    assert one.verdict == NO_DATA and "at 2 batch sizes or more (bnsweep run optimal_lr)" in one.summary
    assert claim(write_grid(tmp_path / "grid", NF_TRAIN), "C8").verdict == NO_DATA
    # A critical-rate search's rates bracket the largest rate that trains: no optimum is read from them.
    searched = claim(search(tmp_path / "search", NONE, {16: (0.2, 0.4), 64: (0.4, 0.8), 256: (1.6, 3.2)}), "C8")
    assert searched.verdict == NO_DATA and "critical-rate search" in searched.summary


def test_each_batch_size_is_a_panel_of_its_own(tmp_path):
    """The paper's figures and C1..C6 group by `setting`: batch sizes must not be pooled there as if seeds. C1..C6
    judge each batch size alone; C8 still compares across them through `network`."""
    data = load(search(tmp_path, NONE, {16: (0.2, 0.4), 64: (0.4, 0.8), 256: (1.6, 3.2)}))
    t = data.trials
    assert list(t["setting"].cat.categories) == ["resnet20 batch 16", "resnet20 batch 64", "resnet20 batch 256"]
    assert set(t["network"].astype(str)) == {"resnet20"}
    assert all((t["setting"].astype(str) == f"resnet20 batch {b}").equals(t["batch_size"] == b) for b in (16, 64))
    b = aggregate.brackets(data["boundaries"], t)  # each cell's bracket in its batch size's panel
    assert (b["setting"] == "resnet20 batch " + b["batch_size"].astype(str)).all()
    assert (b["network"] == "resnet20").all()
    c1 = {c.key: c for c in check_claims(data)}["C1"]
    assert {case["setting"] for case in c1.cases} == set(t["setting"].astype(str))
    # One batch size alone keeps the plain label.
    assert set(load(write_grid(tmp_path / "one", NF_TRAIN)).trials["setting"].astype(str)) == {"resnet20"}


# -- C9: the batch the statistics see -----------------------------------------------------------------------------

FLAT = {64: {0.1: 0.88, 0.4: 0.9}, 2: {0.1: 0.89, 0.4: 0.885}}
FALLS = {64: {0.1: 0.85, 0.4: 0.9}, 2: {0.1: 0.8, 0.4: 0.7}}


def small_batch(root: Path, accuracies: dict[str, dict[int, dict[float, float]]], seeds: int = 1,
                axis: str = "ghost_batch") -> Path:
    """Trials at {size: {lr: accuracy}} per variant, the size being the ghost batch at an SGD batch of 128 (the
    ghost_batch sweep) or, with axis="batch_size", the SGD batch itself (the batch_size sweep)."""
    for norm, by_size in accuracies.items():
        for size, by_lr in by_size.items():
            where = {"ghost_batch": size} if axis == "ghost_batch" else {"batch_size": size}
            for lr, acc in by_lr.items():
                for seed in range(seeds):
                    write_trial(root, norm, lr, True, acc=acc + 0.002 * seed, seed=seed, **where)
    return root


def test_c9_supported_per_seed(tmp_path):
    c9 = claim(small_batch(tmp_path, {"batch": FALLS, "group": FLAT, "ws_group": FLAT}, seeds=2), "C9")
    assert c9.verdict == SUPPORTED and c9.verdict_text() == "supported, 2 of 2 seeds"
    assert "batch: 0.801 at 2, 0.901 at 64, falls +0.100" in c9.summary, c9.summary  # means over 2 seeds
    (batch,) = [c for c in c9.cases if c["norm"] == "batch"]
    assert batch["lr_by_statistics_batch"] == {2: 0.1, 64: 0.4}  # each ghost batch at its best rate
    assert batch["over_seeds"]["fall at the smallest statistics batch"].seeds == 2
    assert batch["setting"] == "resnet20 batch 128, 100 steps" and "ghost batch" in c9.statement


def test_c9_contradicted_when_batch_holds_up(tmp_path):
    """The paper's effect absent: batch's accuracy does not fall when its statistics see 2 examples."""
    c9 = claim(small_batch(tmp_path, {"batch": FLAT, "group": FLAT}), "C9")
    assert c9.verdict == CONTRADICTED and "batch: 0.890 at 2, 0.900 at 64, falls +0.010" in c9.summary


def test_c9_contradicted_when_group_degrades_too(tmp_path):
    c9 = claim(small_batch(tmp_path, {"batch": FALLS, "group": FALLS}), "C9")
    assert c9.verdict == CONTRADICTED and "group: 0.800 at 2, 0.900 at 64, falls at most +0.100" in c9.summary


def test_c9_the_batch_size_sweep_no_longer_judges_it(tmp_path):
    """Issue 20: varying the SGD batch at a fixed example budget changes the steps and the gradient noise too; C9
    compares ghost batches at one SGD batch, so the batch_size sweep's falls are no case of it."""
    c9 = claim(small_batch(tmp_path, {"batch": FALLS, "group": FLAT}, axis="batch_size"), "C9")
    assert c9.verdict == NO_DATA and c9.cases == [] and "bnsweep run ghost_batch" in c9.summary


def test_c9_best_or_matched_rates(tmp_path):
    # batch's best rate moves with the ghost batch: at its best rates it holds up, at 64's best rate it falls.
    moves = {64: {0.1: 0.85, 0.4: 0.9}, 2: {0.1: 0.88, 0.4: 0.7}}
    small_batch(tmp_path, {"batch": moves, "group": FLAT})
    assert claim(tmp_path, "C9").verdict == CONTRADICTED
    matched = claim(tmp_path, "C9", Thresholds(small_batch_compare="matched"))
    assert matched.verdict == SUPPORTED and "matched" in matched.statement
    (batch,) = [c for c in matched.cases if c["norm"] == "batch"]
    assert batch["lr_by_statistics_batch"] == {2: 0.4, 64: 0.4}
    with pytest.raises(ValueError, match="small_batch_compare"):
        claim(tmp_path, "C9", Thresholds(small_batch_compare="median"))


def test_c9_needs_the_reference_to_train(tmp_path):
    """A fall is measured from the largest statistics batch: where batch trained at no rate there (chance accuracy
    at every ghost batch within the budget), the old rule read 'falls +0.000' as contradicted; now it is a budget
    problem, never a verdict."""
    for ghost in (2, 64):
        for lr in (0.1, 0.4):
            write_trial(tmp_path, "batch", lr, False, acc=0.1, status="completed", ghost_batch=ghost)
    small_batch(tmp_path, {"group": FLAT})
    c9 = claim(tmp_path, "C9")
    (batch,) = [c for c in c9.cases if c["norm"] == "batch"]
    assert batch["verdict"] == NO_DATA and "trains at no rate with statistics over 64 (budget)" in batch["why"]
    assert c9.verdict == NO_DATA


def test_c9_without_enough_data(tmp_path):
    # batch alone at two ghost batches: nothing to compare it with.
    only = claim(small_batch(tmp_path / "a", {"batch": FLAT}), "C9")
    assert only.verdict == NO_DATA and "needs batch and group or ws_group" in only.summary
    # One batch size, no ghost batches: no case at all.
    one = claim(write_grid(tmp_path / "b", {"batch": 1.6, "group": 1.6}), "C9")
    assert one.verdict == NO_DATA and one.cases == []


@pytest.mark.parametrize("scale", ["paper", "cpu", "smoke"])
def test_the_ghost_batch_sweep_varies_only_the_statistics(scale):
    """C9's protocol (Wu & He 2018: per-GPU batch at a fixed schedule): one SGD batch and one number of steps, the
    ghost batch varied for batch, group or ws_group as controls at its smallest and largest."""
    from bnsweep.sweep import load as load_sweep

    configs = load_sweep("ghost_batch", scale).configs
    assert len({c.batch_size for c in configs}) == 1 and len({c.steps for c in configs}) == 1
    ghosts = {norm: {c.ghost_batch for c in configs if c.norm == norm} for norm in ("batch", "group")}
    assert len(ghosts["batch"]) >= 2 and {min(ghosts["batch"]), max(ghosts["batch"])} <= ghosts["group"]


def test_each_ghost_batch_is_a_panel_of_its_own(tmp_path):
    """C1..C6 group by `setting`: trials whose statistics see 2 examples must not be pooled with those that see 64
    (nor with those without a ghost batch) as if seeds; `network` stays the one network."""
    small_batch(tmp_path, {"batch": FLAT})
    write_trial(tmp_path, "batch", 0.1, True)  # no ghost batch: statistics over the whole batch of 128
    t = load(tmp_path).trials
    assert set(t["setting"].astype(str)) == {"resnet20 ghost 2", "resnet20 ghost 64", "resnet20 no ghost"}
    assert set(t["network"].astype(str)) == {"resnet20"}
    c1 = {c.key: c for c in check_claims(load(tmp_path))}["C1"]
    assert {case["setting"] for case in c1.cases} <= set(t["setting"].astype(str))


# -- the command and the figures --------------------------------------------------------------------------------

def test_check_writes_c7_to_c9_in_order(tmp_path, capsys):
    optimal_grid(tmp_path, PAPER)
    assert check(str(tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "C8    supported, 1 seed" in printed and "optimal_rate_similar = 2: C8" in printed
    document = json.loads((tmp_path / "claims.json").read_text())
    keys = [k for k in document if k[0] == "C"]
    assert keys == [f"C{i}" for i in range(1, 15)]  # C13, C14: analysis/claims_curvature.py
    text = claims_table(check_claims(load(tmp_path)), Thresholds())
    assert "nf_critical_factor = 4" in text and "small_batch_compare = best" in text


def _charts(spec: dict) -> list[dict]:
    """Every unit chart of a Vega-Lite spec, however nested."""
    found = [spec] if "mark" in spec else []
    for key in ("vconcat", "hconcat", "layer", "concat"):
        for part in spec.get(key, []):
            found += _charts(part)
    return found


def test_resnet_figures_drawn_only_with_their_data(tmp_path):
    vgg = tmp_path / "vgg"
    for f in (FakeTrial("none", 0.1), FakeTrial("batch", 0.1)):
        write_fake_trial(vgg, replace(f, steps=50))
    names = {d.figure.name for d in build_all(load(vgg))}
    assert not {"fig_resnet_lr", "fig_critical_lr_batch_size"} & names  # left out, not "skipped"

    grid = write_grid(tmp_path / "grid", NF_TRAIN)
    drawn = {d.figure.name: d for d in build_all(load(grid), validate=True)}
    assert "fig_critical_lr_batch_size" not in drawn  # one batch size
    spec = drawn["fig_resnet_lr"].spec
    rows = [r for rows in spec["datasets"].values() for r in rows]
    assert {r["norm"] for r in rows} == set(NF_TRAIN)
    assert {"trained", "diverged"} <= {r.get("outcome") for r in rows}
    assert "One seed per point" in drawn["fig_resnet_lr"].caption

    searched = search(tmp_path / "search", NONE, {16: (0.2, 0.4), 64: (0.4, 0.8), 256: (1.6, None)})
    drawn = {d.figure.name: d for d in build_all(load(searched), validate=True)}
    spec = drawn["fig_critical_lr_batch_size"].spec
    rows = [r for rows in spec["datasets"].values() for r in rows]
    assert {r["batch_size"] for r in rows if "critical" in r} == {16, 64, 256}
    assert any(r.get("open_shape") == "triangle-up" and r.get("open_at") == 1.6 for r in rows)
    assert any(r.get("ratio") == pytest.approx(2.0) for r in rows)  # batch over none at batch 64
    # The ratio panel spans the batch sizes of the panel above even where a ratio is missing (open at 256).
    ratio_x = [c["encoding"]["x"] for c in _charts(spec)
               if c.get("encoding", {}).get("y", {}).get("field") == "ratio" and "x" in c["encoding"]]
    assert ratio_x and all(x["scale"]["domain"] == [16, 256] for x in ratio_x)
    assert "fig_resnet_lr" in drawn  # its trials are ResNet trials, one row per batch size


def test_the_claim_and_its_figure_read_one_critical_rate(tmp_path):
    """C8's critical rates and fig_critical_lr_batch_size's are one computation (critical_lr.critical): the same
    number per variant and batch size, the same ratio over none's, and an open bracket has none in both."""
    batch = {16: (0.2, 0.4), 64: (0.4, 0.8), 256: (1.6, None)}
    data = load(search(tmp_path, NONE, batch))
    ctx = Context(data, Thresholds())
    claimed = {(norm, size): v.value for (_, size, norm), v in critical_rates(ctx).items()}
    drawn = {d.figure.name: d for d in build_all(data)}["fig_critical_lr_batch_size"].spec
    rows = [r for rows in drawn["datasets"].values() for r in rows if "critical" in r]
    plotted = {(r["norm"], r["batch_size"]): r["critical"] for r in rows}
    assert set(plotted) == set(claimed)
    for key, value in claimed.items():
        if value is None:  # open: no point on the line
            assert plotted[key] is None or math.isnan(plotted[key]), key
        else:
            assert plotted[key] == value, key
    assert claimed[("batch", 64)] == critical_lr.critical(0.4, 0.8) == math.sqrt(0.4 * 0.8)
    assert claimed[("batch", 256)] is None and critical_lr.critical(1.6, None) is None


def test_the_claim_and_its_figure_follow_one_definition_of_the_critical_rate(tmp_path, monkeypatch):
    """Change the rule in critical_lr.critical alone (here: the arithmetic midpoint) and both C8's rates and
    fig_critical_lr_batch_size's points follow it: neither keeps a formula of its own."""
    monkeypatch.setattr(critical_lr, "critical", lambda lo, hi: (lo + hi) / 2 if _closed(lo, hi) else None)
    data = load(search(tmp_path, NONE, {16: (0.2, 0.4), 64: (0.4, 0.8)}))
    claimed = {(norm, size): v.value for (_, size, norm), v in critical_rates(Context(data, Thresholds())).items()}
    drawn = {d.figure.name: d for d in build_all(data)}["fig_critical_lr_batch_size"].spec
    plotted = {(r["norm"], r["batch_size"]): r["critical"]
               for rows in drawn["datasets"].values() for r in rows if "critical" in r}
    assert claimed[("batch", 64)] == plotted[("batch", 64)] == pytest.approx(0.6)  # sqrt would give 0.566
    assert claimed[("batch", 16)] == plotted[("batch", 16)] == pytest.approx(0.3)


def _closed(lower: float | None, upper: float | None) -> bool:
    return lower is not None and upper is not None and not (math.isnan(lower) or math.isnan(upper))


def test_the_ghost_batch_figure_draws_what_c9_judges(tmp_path):
    """fig_ghost_batch's line is each variant at the rate C9 reads per ghost batch, with the same accuracy; without
    a ghost-batch axis (the batch_size sweep's trials) it is left out."""
    data = load(small_batch(tmp_path, {"batch": FALLS, "group": FLAT}))
    drawn = {d.figure.name: d for d in build_all(data, validate=True)}
    rows = [r for rows in drawn["fig_ghost_batch"].spec["datasets"].values() for r in rows if "best" in r]
    line = {(r["norm"], r["statistics"]): (r["lr"], r["acc"]) for r in rows if r["best"]}
    c9 = claim(tmp_path, "C9")
    for case in c9.cases:
        for size, lr in case["lr_by_statistics_batch"].items():
            assert line[(case["norm"], size)] == (lr, pytest.approx(case["numbers"][f"final_test_acc at statistics "
                                                                                      f"batch {size}"]))
    assert len(rows) == 8  # every rate tried is marked
    other = load(small_batch(tmp_path / "sizes", {"batch": FALLS, "group": FLAT}, axis="batch_size"))
    assert "fig_ghost_batch" not in {d.figure.name for d in build_all(other)}


def _rows(drawn, name: str) -> list[dict]:
    return [r for rows in drawn[name].spec["datasets"].values() for r in rows]


def test_the_optimal_rate_figure_reads_the_claims_optima(tmp_path):
    """fig_optimal_lr_batch_size, C8's figure, plots the claim's own optima (claims_resnets.optima): the same rate
    and accuracy per variant and batch size, an optimum at the grid's edge marked as such, the critical rate beside."""
    curves = {**PAPER, "batch": {16: PAPER["batch"][16], 256: peak(3.2, 0.88, largest=3.2)}}
    data = load(optimal_grid(tmp_path, curves))
    drawn = {d.figure.name: d for d in build_all(data, validate=True)}
    rows = {(r["norm"], r["batch_size"]): r for r in _rows(drawn, "fig_optimal_lr_batch_size") if "edge" in r}
    assert set(rows) == {(n, s) for n in ("batch", "skipinit") for s in (16, 256)}
    assert rows[("batch", 16)]["optimal_lr"] == rows[("skipinit", 16)]["optimal_lr"] == 0.05
    assert rows[("batch", 256)]["optimal_lr"] == 3.2 and rows[("batch", 256)]["edge"] == "top"
    assert rows[("skipinit", 256)]["best_acc"] == pytest.approx(0.84) and rows[("skipinit", 256)]["edge"] == "inside"
    assert rows[("skipinit", 16)]["critical"] == pytest.approx(math.sqrt(0.1 * 0.2))
    (case,) = claim(tmp_path, "C8").cases
    assert case["numbers"]["skipinit optimal rate at batch 256"] == rows[("skipinit", 256)]["optimal_lr"]
    # Left out where batch has no skipinit to compare with, where there is no grid at several batch sizes, and for a
    # critical-rate search.
    alone = optimal_grid(tmp_path / "alone", {"batch": PAPER["batch"]})
    assert "fig_optimal_lr_batch_size" not in {d.figure.name for d in build_all(load(alone))}
    assert "fig_optimal_lr_batch_size" not in {d.figure.name for d in build_all(load(write_grid(
        tmp_path / "one", NF_TRAIN)))}
    searched = search(tmp_path / "search", NONE, {16: (0.2, 0.4), 64: (0.4, 0.8), 256: (1.6, 3.2)})
    assert "fig_optimal_lr_batch_size" not in {d.figure.name for d in build_all(load(searched))}
