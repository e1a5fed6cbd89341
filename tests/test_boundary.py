"""The critical-learning-rate search (issue 6): bracket logic, the quadratic task with a known boundary, the
sweep file's `search` block, and `bnsweep run lr_boundary --scale smoke` on real Ray, killed and resumed."""

from __future__ import annotations

import io
import math
import os
import signal
import textwrap

import pandas as pd
import pyarrow as pa
import pytest
import torch
from test_faults import attempt_files, bnsweep_cmd, ray_env, run_to_end, started, wait_until  # noqa: F401
from test_plan import simulated_brackets

from bnsweep import records
from bnsweep.boundary import boundary_rows, bracket, make_cells, propose, replay
from bnsweep.config import make_config
from bnsweep.data import load_dataset, quadratic_eigenvalues
from bnsweep.driver import run_sweep
from bnsweep.errors import BnsweepError
from bnsweep.schema import BOUNDARIES_SCHEMA as SCHEMA
from bnsweep.sweep import SEARCH_DEFAULTS, load
from bnsweep.trial import run_trial

SEARCH = {**SEARCH_DEFAULTS, "ratio": 1.25, "budget": 12, "points_per_round": 3, "extend": 4.0}


def write(tmp_path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


# -- the bracket and the next round ----------------------------------------------------------------------------

def test_bracket_monotone_non_monotone_and_one_sided():
    b = bracket({0.1: True, 0.2: True, 0.4: False, 0.8: False})
    assert (b.lower, b.upper, b.monotone, b.ratio) == (0.2, 0.4, True, 2.0)
    # Not monotone: failures below a rate that trained. Flagged; the bracket is the top of the trained range.
    b = bracket({0.05: False, 0.1: True, 0.2: False, 0.4: True, 0.8: False, 1.6: False})
    assert (b.lower, b.upper, b.monotone, b.failed_below) == (0.4, 0.8, False, 2)
    assert bracket({0.1: False, 0.2: False}) == bracket({0.2: False, 0.1: False})
    b = bracket({0.1: False, 0.2: False})
    assert (b.lower, b.upper, b.ratio) == (None, 0.1, None)
    b = bracket({0.1: True, 0.2: True})
    assert (b.lower, b.upper, b.monotone) == (0.2, None, True)


def test_propose_extends_refines_and_respects_the_budget():
    # Nothing failed: extend up by `extend`; nothing trained: down.
    assert propose({0.1: True, 0.4: True}, SEARCH) == [1.6, 6.4, 25.6]
    assert propose({0.1: False, 0.4: False}, SEARCH) == [0.025, 0.00625, 0.0015625]
    # Refine in log space: [1, 4] needs ratio 4^(1/4) < 1.25 ... 3 points; [1, 1.5] only one.
    assert propose({1.0: True, 4.0: False}, SEARCH) == [1.41421, 2.0, 2.82843]
    assert propose({1.0: True, 1.5: False}, SEARCH) == [1.22474]
    assert propose({1.0: True, 1.2: False}, SEARCH) == []  # converged
    # Budget: 5 trials at most, 4 spent -> one more point; 5 spent -> done.
    small = {**SEARCH, "budget": 5}
    four = {0.1: True, 0.2: True, 0.4: True, 0.8: True}
    assert propose(four, small) == [3.2]
    assert propose({**four, 3.2: True}, small) == []
    # A non-monotone cell is refined at the top of its trained range.
    assert propose({0.05: False, 0.1: True, 0.2: False, 0.4: True, 0.6: False}, SEARCH) == [0.489898]


def test_search_on_an_oracle_converges_and_replays_from_records(tmp_path):
    path = write(tmp_path, """
        base: {arch: linear, norm: none, steps: 10, probe_every: 0}
        grids: {q: {lr: [0.01, 1]}}
        seeds: 2
        search: {ratio: 1.1, budget: 20, points_per_round: 2}
        """)
    sw = load(path, "paper")
    cells = make_cells(sw)
    assert len(cells) == 2 and {c.base.seed for c in cells} == {0, 1}
    critical = {0: 0.3, 1: 0.37}
    known: dict[str, dict] = {}
    rounds = 0
    while True:  # the driver's loop without Ray: run what is pending, record it, replay
        for cell in cells:
            replay(cell, known, set(), sw.search)
        todo = [c for cell in cells for c in cell.pending]
        if not todo:
            break
        rounds += 1
        for c in todo:
            known[c.trial_id] = {"status": "completed", "trained": c.lr < critical[c.seed]}
    for cell in cells:
        b = cell.bracket()
        assert b.lower < critical[cell.base.seed] <= b.upper and b.ratio <= 1.1
        assert len(cell.outcomes) <= 20 and 2 <= cell.rounds <= rounds
    # Replaying the same records again proposes nothing: resume reruns nothing.
    for cell in cells:
        replay(cell, known, set(), sw.search)
        assert not cell.pending
    # The boundaries rows: one per cell, one per group over seeds (geometric means, envelope, flags).
    rows = boundary_rows(cells, sw)
    assert len(rows) == 3 and [r["all_seeds"] for r in rows] == [False, False, True]
    agg, per_seed = rows[2], rows[:2]
    assert agg["seed"] == -1 and agg["seeds"] == 2
    assert agg["lower"] == pytest.approx(math.sqrt(per_seed[0]["lower"] * per_seed[1]["lower"]))
    assert agg["lower_min"] == min(r["lower"] for r in per_seed)
    assert agg["upper_max"] == max(r["upper"] for r in per_seed)
    assert agg["trials_used"] == sum(r["trials_used"] for r in per_seed)
    assert agg["monotone"] == all(r["monotone"] for r in per_seed)
    # A trial recorded `failed` (it crashed) is run again by a new invocation, not within the one that ran it.
    first = cells[0].config(cells[0].initial[0]).trial_id
    known[first] = {"status": "failed", "trained": False}
    replay(cells[0], known, set(), sw.search)
    assert [c.trial_id for c in cells[0].pending] == [first]
    replay(cells[0], known, {first}, sw.search)
    assert first not in {c.trial_id for c in cells[0].pending}


def test_non_monotone_and_budget_flags(tmp_path):
    path = write(tmp_path, """
        base: {arch: linear, norm: none, steps: 10, probe_every: 0}
        grids: {q: {lr: [0.01, 0.1, 1]}}
        search: {budget: 4, points_per_round: 1}
        """)
    sw = load(path, "paper")
    (cell,) = make_cells(sw)
    # Fails at the lowest rate (too slow), trains at 0.1 and fails at 1: flagged, budget spent before 1.25x.
    outcome = {0.01: False, 0.1: True, 1.0: False}
    known = {cell.config(lr).trial_id: {"status": "completed", "trained": ok} for lr, ok in outcome.items()}
    replay(cell, known, set(), sw.search)
    (extra,) = cell.pending
    known[extra.trial_id] = {"status": "diverged", "trained": False}
    replay(cell, known, set(), sw.search)
    assert not cell.pending
    (row, _agg) = boundary_rows([cell], sw)
    assert (row["monotone"], row["failed_below"], row["converged"], row["budget_exhausted"]) == (False, 1, False, True)
    assert row["lower"] == 0.1 and row["upper"] == extra.lr and row["trials_used"] == 4


# -- the quadratic task ---------------------------------------------------------------------------------------

def test_quadratic_has_the_hessian_it_claims_and_its_boundary_at_two_over_lambda():
    data = load_dataset("quadratic", curvature=3.0, data_seed=5)
    x = data.train_x.double()
    hessian = 2 * x.T @ x  # of sum_i (x_i w - y_i)^2, the trial's regression loss
    assert torch.allclose(torch.linalg.eigvalsh(hessian).flip(0), torch.from_numpy(quadratic_eigenvalues(3.0)),
                          rtol=1e-5)
    assert load_dataset("quadratic", curvature=3.0, data_seed=5).checksum == data.checksum
    critical = 2 / 3.0

    def outcome(factor):
        config = make_config({"arch": "linear", "norm": "none", "curvature": 3, "lr": critical * factor,
                              "steps": 200, "probe_every": 0, "eval_every": 200})
        return run_trial(config).outcome()

    assert outcome(0.99)["trained"] and outcome(0.5)["trained"]
    assert not outcome(1.001)["trained"]  # grows slowly: completed, not trained
    assert outcome(1.1)["status"] == "diverged"
    with pytest.raises(BnsweepError, match="linear.*norm none"):
        make_config({"arch": "linear", "norm": "batch"})
    with pytest.raises(BnsweepError, match="linear with quadratic"):
        make_config({"arch": "linear", "norm": "none", "dataset": "fashion-mnist"})
    with pytest.raises(BnsweepError, match="curvature only applies"):
        make_config({"arch": "vgg11", "curvature": 2})
    # A field added later leaves the ids of earlier trials unchanged while it keeps its default.
    assert "curvature" not in make_config({"arch": "vgg11"}).identity()


# -- the sweep file -------------------------------------------------------------------------------------------

def test_lr_boundary_sweep_at_every_scale_and_dry_run():
    for scale in ("paper", "cpu", "smoke"):
        sw = load("lr_boundary", scale)
        assert sw.search and sw.search["ratio"] == 1.25
        variants = {c.norm for c in sw.configs if c.arch.startswith("vgg")}
        assert variants == ({"batch"} if scale == "smoke" else {"none", "batch", "noisy_batch"})
        assert any(c.dataset == "quadratic" for c in sw.configs)
    paper = load("lr_boundary", "paper")
    assert {(c.arch, c.dataset, c.steps) for c in paper.configs if c.arch != "linear"} == {("vgg16", "cifar10", 15000)}
    out = io.StringIO()
    run_sweep("lr_boundary", scale="smoke", dry_run=True, stream=out)
    text = out.getvalue()
    assert "3 cells" in text and "round 1:" in text and "linear-none-lr0.25" in text


@pytest.mark.parametrize("block, words", [
    ("search: {ratio: 1.25, colour: red}", ["s.yaml", "colour", "search", "allowed"]),
    ("search: {ratio: 1}", ["search.ratio", "> 1"]),
    ("search: {budget: 1.5}", ["search.budget", "whole"]),
    ("search: {budget: 1}", ["budget", "initial learning rates"]),
    ("search: {points_per_round: many}", ["points_per_round", "number"]),
    ("scales: {smoke: {search: {extend: 0.5}}}", ["scales.smoke.search.extend", "> 1"]),
])
def test_bad_search_blocks_are_one_line_errors(tmp_path, block, words):
    path = write(tmp_path, "grids: {q: {arch: linear, norm: none, lr: [0.1, 1]}}\n" + block + "\n")
    with pytest.raises(BnsweepError) as e:
        load(path, "smoke" if "smoke" in block else "paper")
    assert "\n" not in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_search_settings_merge_per_scale_and_with_set(tmp_path):
    path = write(tmp_path, """
        grids: {q: {arch: linear, norm: none, lr: [0.1, 1]}}
        search: {ratio: 1.5}
        scales: {smoke: {search: {budget: 5}}}
        """)
    assert load(path, "smoke").search == {**SEARCH_DEFAULTS, "ratio": 1.5, "budget": 5}
    assert load(path, "smoke", sets=["search.ratio=1.1"]).search["ratio"] == 1.1
    assert load("lr_grid", "smoke").search is None


# -- on Ray: bnsweep run lr_boundary --scale smoke, killed after its first round, then resumed ------------------

def test_smoke_search_on_ray_is_killed_resumed_and_brackets_two_over_lambda(tmp_path, ray_env):  # noqa: F811
    results = tmp_path / "results"
    cmd = bnsweep_cmd("run", "lr_boundary", "--scale", "smoke", "--results", str(results), "--num-cpus", "2")
    sw = load("lr_boundary", "smoke")
    first_round = {c.trial_id for c in sw.configs}

    with started(cmd, ray_env, tmp_path / "run1.log") as driver:
        # The boundaries are written after every round: once they are there, round 1 has landed.
        wait_until(lambda: records.list_trial_files(str(results), "boundaries"), 240, "the first round",
                   driver, tmp_path / "run1.log")
        os.killpg(driver.pid, signal.SIGKILL)
    before = {p.stem: p.stat().st_mtime_ns for p in (results / "trials").glob("*.parquet")}
    assert first_round <= set(before)

    out = run_to_end(cmd, ray_env, tmp_path / "run2.log", timeout=240)
    assert f"{len(before)} trials of this search already recorded" in out
    trials = pd.read_parquet(results / "trials")
    assert trials.trial_id.is_unique and set(before) <= set(trials.trial_id)
    for trial_id, mtime in before.items():  # finished before the kill: not run again
        assert (results / "trials" / f"{trial_id}.parquet").stat().st_mtime_ns == mtime
    rows = trials.set_index("trial_id")
    for trial_id in before:
        assert rows.loc[trial_id, "attempt"] == 1 and len(attempt_files(results, trial_id)) == 1
    for trial_id in rows.index:
        assert len(attempt_files(results, trial_id)) == rows.loc[trial_id, "attempt"]
    assert set(rows.status) <= {"completed", "diverged"}

    bounds = pd.read_parquet(results / "boundaries")
    assert any("low" in c for c in bounds.columns) and any("up" in c for c in bounds.columns)
    cells, groups = bounds[~bounds.all_seeds], bounds[bounds.all_seeds]
    assert len(cells) == 3 and len(groups) == 3 and cells.cell_id.is_unique
    assert cells.trials_used.sum() == len(trials)  # every trial is one of the search's, in an ordinary table
    simulated = simulated_brackets("smoke")  # the planner alone, on the outcome GD on a quadratic must have
    for _, cell in cells[cells.dataset == "quadratic"].iterrows():
        critical = 2 / cell.curvature
        assert cell.lower < critical <= cell.upper and cell.upper / cell.lower <= 1.25, cell.to_dict()
        assert (cell.lower, cell.upper) == simulated[cell.curvature]
        assert cell.converged and cell.monotone and not cell.budget_exhausted
        ids = rows[(rows.dataset == "quadratic") & (rows.curvature == cell.curvature)]
        assert sorted(ids.lr) == sorted(cell.lrs) and set(ids.task) == {"regression"}
    assert "round 2:" in out and "converged 3/3" in out and "curvature=3" in out

    # A third run has nothing left to do and starts no Ray.
    log = io.StringIO()
    run_sweep("lr_boundary", scale="smoke", results=str(results), stream=log)
    assert f"{len(trials)} trials of this search already recorded" in log.getvalue()
    assert not [line for line in log.getvalue().splitlines() if line.startswith("round ")]


# -- analysis: the figure and claim C1 from the brackets ------------------------------------------------------

def write_bracket(results, norm: str, lower: float | None, upper: float | None, monotone: bool = True) -> None:
    """A `boundaries` row over seeds for vgg11 (the fake trials' setting), in the real schema."""
    row = dict.fromkeys(SCHEMA.names)
    row.update(sweep="t", scale="smoke", cell_id=f"vgg11-{norm}-seeds-0", all_seeds=True, arch="vgg11", norm=norm,
               width=0.125, dataset="fashion-mnist", seed=-1, seeds=2, steps=200, batch_size=128, curvature=1.0,
               cell="{}", lower=lower, upper=upper, ratio=upper / lower if lower and upper else None,
               lower_min=lower, upper_max=upper, trials_used=7, rounds=2, monotone=monotone, failed_below=0,
               converged=True, budget_exhausted=False, target_ratio=1.25, budget=12, fixed_grid_trials=11)
    records.write_table(str(results), "boundaries", row["cell_id"], pa.Table.from_pylist([row], schema=SCHEMA))


@pytest.fixture(scope="module")
def fake_grid(tmp_path_factory):
    """Fake vgg11 trials where the grid alone says batch trains at 0.5 and none does not."""
    from bnsweep.bench.figures import FakeTrial, write_fake_trial

    root = tmp_path_factory.mktemp("grid")
    for lr in (0.1, 0.5):
        write_fake_trial(root, FakeTrial("none", lr, status="diverged" if lr == 0.5 else "completed"))
        write_fake_trial(root, FakeTrial("batch", lr))
    return root


@pytest.mark.parametrize("none, batch, verdict, words", [
    ((0.2, 0.25), (0.8, 0.95), "supported", "batch [0.8, 0.95], none [0.2, 0.25]"),
    ((0.8, 0.95), (0.2, 0.25), "contradicted", "batch [0.2, 0.25]"),
    ((0.2, 0.25), (0.21, 0.26), "contradicted", "overlap"),
    ((0.2, None), (0.3, None), "not enough data", "open"),
])
def test_claim_c1_uses_the_brackets(fake_grid, tmp_path, none, batch, verdict, words):
    import shutil

    from analysis import Thresholds, check_claims, load

    results = tmp_path / "r"
    shutil.copytree(fake_grid, results)
    write_bracket(results, "none", *none, monotone=False)
    write_bracket(results, "batch", *batch)
    (c1,) = [c for c in check_claims(load(results)) if c.key == "C1"]
    (case,) = c1.cases
    assert case["source"] == "boundaries" and case["verdict"] == verdict and words in case["why"]
    assert "none not monotone" in case["why"]
    # Re-judging `trained` with other thresholds makes the recorded brackets stale: back to the grid.
    (c1,) = [c for c in check_claims(load(results), Thresholds(trained_acc=0.5)) if c.key == "C1"]
    assert "source" not in c1.cases[0] and c1.verdict == "supported"


def test_critical_lr_figure_is_drawn_only_with_boundaries(fake_grid, tmp_path):
    import shutil

    from analysis import load
    from analysis.commands import build_all

    assert "fig10_critical_lr" not in {d.figure.name for d in build_all(load(fake_grid))}  # nor "skipped"
    results = tmp_path / "r"
    shutil.copytree(fake_grid, results)
    write_bracket(results, "none", 0.2, 0.25)
    write_bracket(results, "batch", 0.8, None)  # open: batch trained at every rate tried
    drawn = {d.figure.name: d for d in build_all(load(results), validate=True)}
    spec = drawn["fig10_critical_lr"].spec
    rows = [r for rows in spec["datasets"].values() for r in rows]
    assert {r["cell_label"] for r in rows} == {"none", "batch"}
    assert any(r["open_shape"] == "triangle-right" and r["open_at"] == 0.8 for r in rows)
