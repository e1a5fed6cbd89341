"""Every verdict with its uncertainty (issue 15): intervals over seeds, per-seed agreement, bands and the
critical learning rate over seeds.

Synthetic results with a known spread: the intervals' coverage over many draws, the per-seed counts of claims
whose seeds are made to agree or not, and a critical-learning-rate search simulated through bnsweep.boundary's
own bracket logic and written in the real `boundaries` schema.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import check_claims, load
from analysis import critical_lr as clr
from analysis.aggregate import over_seeds
from analysis.claims import CONTRADICTED, NO_DATA, SEEDS_DISAGREE, SUPPORTED, Claim, seed_agreement
from analysis.commands import build_all, check
from analysis.load import Results
from analysis.uncertainty import Bootstrap, band_note, estimate, paired_ratio
from bnsweep.bench.figures import FakeTrial, write_fake_trial
from bnsweep.boundary import boundary_rows, make_cells, propose, write_boundaries
from bnsweep.sweep import load as load_sweep

BOOT = Bootstrap(n_resamples=2000)  # the coverage tests draw hundreds of intervals: fewer resamples, same method


# -- intervals: coverage over synthetic draws --------------------------------------------------------------------

def coverage(draw, truth: float, draws: int, log: bool = False) -> float:
    """Share of `draws` intervals (one per synthetic set of seeds) that hold `truth`."""
    hits = 0
    for _ in range(draws):
        e = estimate(list(draw()), BOOT, log=log)
        assert e.has_interval
        hits += e.low <= truth <= e.high
    return hits / draws


def test_intervals_cover_the_truth_at_the_nominal_rate_with_many_seeds():
    rng = np.random.default_rng(15)
    # 20 seeds: the percentile bootstrap is near nominal (0.93 measured over 2,000 draws). 300 draws: sd 0.013.
    assert 0.88 <= coverage(lambda: rng.normal(2.0, 0.5, 20), 2.0, 300) <= 0.99
    # A rate: log-normal spread, geometric mean (the truth is the median, exp(mu)).
    assert 0.88 <= coverage(lambda: rng.lognormal(math.log(0.4), 0.3, 20), 0.4, 300, log=True) <= 0.99


def test_three_seeds_cover_about_three_times_in_four():
    # What the README and `bnsweep check` say: over 3 seeds a percentile interval lies inside their range, which
    # misses a symmetric spread's centre one time in four. Measured here so the sentence stays true.
    rng = np.random.default_rng(16)
    assert 0.66 <= coverage(lambda: rng.normal(0.0, 1.0, 3), 0.0, 400) <= 0.84


def test_the_paired_ratio_covers_the_true_ratio():
    rng = np.random.default_rng(17)
    hits, draws = 0, 200
    for _ in range(draws):
        seeds = range(20)
        none = {s: 0.45 * rng.lognormal(0, 0.2) for s in seeds}
        batch = {s: none[s] * 8.0 * rng.lognormal(0, 0.2) for s in seeds}  # paired: batch's rate moves with none's
        e = paired_ratio(batch, none, BOOT)
        hits += e.low <= 8.0 <= e.high
    assert 0.86 <= hits / draws <= 0.99


def test_few_seeds_have_no_interval_and_say_why():
    one, two = estimate([0.4], BOOT), estimate({0: 0.4, 1: 0.5}, BOOT)
    assert not one.has_interval and one.text() == "0.4 (1 seed: no interval)"
    assert not two.has_interval and "2 seeds: no interval, range 0.4-0.5" in two.text()
    assert two.as_dict()["per_seed"] == {"0": 0.4, "1": 0.5}
    three = estimate([1.0, 2.0, 3.0], Bootstrap())
    assert three.has_interval and 1.0 <= three.low < 2.0 < three.high <= 3.0 and three.value == 2.0
    assert three.text().startswith("2 [")
    same = estimate([0.4, 0.4, 0.4], Bootstrap(method="BCa"))  # BCa gives NaN on equal values: not here
    assert (same.low, same.high) == (0.4, 0.4)
    never = estimate([10.0, math.inf, 12.0], Bootstrap())
    assert not never.has_interval and "not finite in 1 of 3 seeds" in never.note
    assert json.dumps(never.as_dict(), allow_nan=False)  # inf as "inf", NaN as null
    # Reproducible: the same values give the same interval (a fixed random seed).
    assert estimate([1.0, 2.0, 4.0], Bootstrap()) == estimate([1.0, 2.0, 4.0], Bootstrap())


# -- the verdict over seeds ---------------------------------------------------------------------------------------

def test_seed_agreement_rule():
    S, C, N = SUPPORTED, CONTRADICTED, NO_DATA
    share = 2 / 3
    assert seed_agreement([S, S, S], share) == S
    assert seed_agreement([S, S, C], share) == S
    assert seed_agreement([S, C, C], share) == C  # 1 of 3 is not supported
    assert seed_agreement([S, C], share) == SEEDS_DISAGREE
    assert seed_agreement([S, N, N], share) == S  # only judged seeds count
    assert seed_agreement([N, N, N], share) == N
    assert seed_agreement([S, S, C], 1.0) == SEEDS_DISAGREE  # the stricter rule, if asked for
    with pytest.raises(ValueError, match="above one half"):
        seed_agreement([S, C], 0.5)  # both verdicts would reach it
    claim = Claim("C9", "x", S, "", seed_verdicts={0: S, 1: S, 2: N})
    assert claim.verdict_text() == "supported, 2 of 3 seeds (1 no data)"
    assert Claim("C9", "x", S, "", seed_verdicts={0: S}).verdict_text() == "supported, 1 seed"


def pair(seed: int, batch_faster: bool) -> list[FakeTrial]:
    """none and batch at one rate where both train; C2 (speed) holds in this seed when batch is the faster."""
    fast, slow = 15.0, 60.0
    small = {"steps": 120, "probe_every": 1000, "eval_every": 60, "seed": seed}
    return [FakeTrial("none", 0.1, tau=slow if batch_faster else fast, final=0.9, **small),
            FakeTrial("batch", 0.1, tau=fast if batch_faster else slow, final=0.9, **small)]


@pytest.fixture(scope="module")
def agreeing(tmp_path_factory) -> dict[str, str]:
    """Results sets whose seeds support C2 in a known pattern, by name: the pattern of each seed."""
    sets = {}
    for name, pattern in {"3of3": (True, True, True), "2of3": (True, True, False), "1of3": (True, False, False),
                          "1of2": (True, False), "one": (True,)}.items():
        root = tmp_path_factory.mktemp(name)
        for seed, faster in enumerate(pattern):
            for f in pair(seed, faster):
                write_fake_trial(root, f)
        sets[name] = str(root)
    return sets


@pytest.mark.parametrize("name, verdict, text", [
    ("3of3", SUPPORTED, "supported, 3 of 3 seeds"),
    ("2of3", SUPPORTED, "supported, 2 of 3 seeds"),
    ("1of3", CONTRADICTED, "contradicted, 1 of 3 seeds"),
    ("1of2", SEEDS_DISAGREE, "seeds disagree, 1 of 2 seeds"),
    ("one", SUPPORTED, "supported, 1 seed"),
])
def test_per_seed_counts(agreeing, name, verdict, text):
    c2 = {c.key: c for c in check_claims(load(agreeing[name]))}["C2"]
    assert c2.verdict == verdict and c2.verdict_text() == text
    pattern = {"3of3": "SSS", "2of3": "SSC", "1of3": "SCC", "1of2": "SC", "one": "S"}[name]
    expected = {seed: SUPPORTED if p == "S" else CONTRADICTED for seed, p in enumerate(pattern)}
    assert c2.seed_verdicts == expected and c2.cases[0]["seeds"] == expected


def test_check_prints_counts_and_writes_them_to_claims_json(agreeing, capsys):
    assert check(agreeing["2of3"]) == 0
    out = capsys.readouterr().out
    assert "C2    supported, 2 of 3 seeds" in out and "95% bootstrap CI" in " ".join(out.split())
    assert "steps_batch" in out and "[" in out.split("steps_batch")[1].split(",")[0]  # a number with its interval
    doc = json.loads((Path(agreeing["2of3"]) / "claims.json").read_text())
    c2 = doc["C2"]
    assert c2["verdict"] == SUPPORTED and c2["verdict_line"] == "supported, 2 of 3 seeds"
    assert c2["seeds"] == {"0": SUPPORTED, "1": SUPPORTED, "2": CONTRADICTED}
    assert c2["seed_counts"] == {SUPPORTED: 2, CONTRADICTED: 1, NO_DATA: 0, "seeds": 3}
    steps = c2["cases"][0]["over_seeds"]["steps_batch"]
    assert steps["seeds"] == 3 and steps["low"] <= steps["value"] <= steps["high"]
    assert set(steps["per_seed"]) == {"0", "1", "2"}
    assert doc["bootstrap"]["n_resamples"] == 9999 and doc["bootstrap"]["confidence"] == 0.95
    assert doc["bootstrap"]["library"] == "scipy.stats.bootstrap" and doc["seeds"] == [0, 1, 2]
    assert doc["thresholds"]["seed_agreement"] == pytest.approx(2 / 3) and "seed_rule" in doc


def test_one_seed_says_so(agreeing, capsys):
    assert check(agreeing["one"]) == 0
    out = capsys.readouterr().out
    assert "C2    supported, 1 seed" in out and "no number has an interval" in out
    c2 = json.loads((Path(agreeing["one"]) / "claims.json").read_text())["C2"]
    assert c2["cases"][0]["over_seeds"]["steps_batch"]["note"] == "1 seed: no interval"


def test_a_later_claim_gets_seeds_and_intervals_as_it_is(agreeing, monkeypatch):
    """A claim added to CHECKS (C7..C12) needs nothing else: judged per seed, counted, its numbers given intervals;
    cases named by a number (`identity`) match across seeds even when a seed lists them in another order."""
    import analysis.claims as claims

    def c7(ctx: claims.Context) -> Claim:
        seed = int(ctx.trials["seed"].iloc[0]) if ctx.trials["seed"].nunique() == 1 else -1
        sizes = [128, 256] if seed != 1 else [256, 128]
        cases = [{"setting": "vgg11", "batch_size": b, "identity": ["batch_size"], "gap": b / 128 + max(seed, 0),
                  "verdict": SUPPORTED if seed != 2 else CONTRADICTED, "why": "x"} for b in sizes]
        return Claim("C7", "later", claims.combine(cases, 0.75), "", cases)

    monkeypatch.setattr(claims, "CHECKS", (claims.c2_speed, c7))
    monkeypatch.setattr(claims, "EXTRA_CHECKS", [])  # the registered C7..C12 are not this test's
    c2, c7_claim = check_claims(load(agreeing["3of3"]))
    assert c2.verdict_text() == "supported, 3 of 3 seeds"
    assert c7_claim.verdict_text() == "supported, 2 of 3 seeds"
    by_size = {case["batch_size"]: case["over_seeds"]["gap"] for case in c7_claim.cases}
    assert by_size[128].as_dict()["per_seed"] == {"0": 1.0, "1": 2.0, "2": 3.0}
    assert by_size[256].as_dict()["per_seed"] == {"0": 2.0, "1": 3.0, "2": 4.0} and by_size[256].has_interval
    assert "batch_size" not in c7_claim.cases[0]["over_seeds"]  # a number that names the case is not a result


# -- figure bands -------------------------------------------------------------------------------------------------

def test_band_by_seed_count():
    rows = [("a", 0, 1.0), ("b", 0, 1.0), ("b", 1, 3.0)] + [("c", s, v) for s, v in enumerate([1.0, 2.0, 3.0, 9.0])]
    df = pd.DataFrame(rows, columns=["point", "seed", "value"])
    out = over_seeds(df, "value", ["point"]).set_index("point")
    assert out.loc["a", "seeds"] == 1 and np.isnan(out.loc["a", "value_lo"])  # one seed: no band
    assert (out.loc["b", "value_lo"], out.loc["b", "value_hi"]) == (1.0, 3.0)  # two: min-max
    c = out.loc["c"]
    assert c["value"] == 3.75 and 1.0 <= c["value_lo"] < 3.75 < c["value_hi"] <= 9.0  # four: the mean's interval
    assert band_note([1]).startswith("One seed per point: no band")
    assert band_note([2]).startswith("Band: the min-max range of the 2 seeds")
    assert "95% CI of the mean over seeds" in band_note([3]) and "2,000 resamples" in band_note([3])
    assert "none where it has 1" in band_note([1, 3])


def test_figure_captions_say_which_band(agreeing):
    from analysis.figures import FIGURES, band_caption, fig_lr_robustness

    fig1, fig2 = FIGURES[:2]
    for name, words in (("3of3", "95% CI"), ("1of2", "min-max range"), ("one", "no band")):
        data = load(agreeing[name])
        assert words in band_caption(fig1, data) and words in band_caption(fig2, data)
    drawn = {d.figure.name: d for d in build_all(load(agreeing["one"]))}
    assert drawn["fig1_lr_robustness"].caption == f"{fig1.caption} {band_caption(fig1, load(agreeing['one']))}"
    assert drawn["fig6_landscape"].caption == drawn["fig6_landscape"].figure.caption  # no band there
    spec = fig_lr_robustness(load(agreeing["3of3"])).to_dict()
    rows = [r for rows in spec["datasets"].values() for r in rows if r.get("kind") == "mean"]
    assert rows and all(r["shown_lo"] <= r["shown"] <= r["shown_hi"] for r in rows)


# -- the critical learning rate over seeds ------------------------------------------------------------------------

TRUTH = {"none": 0.45, "batch": 3.6, "noisy_batch": 3.0}


def simulate(sw, cells, spread: float, rng: np.random.Generator) -> None:
    """A search by bnsweep.boundary's own rounds on outcomes drawn around TRUTH: each cell's critical rate
    log-normal with sd `spread`; the quadratic cells' is 2/curvature."""
    for cell in cells:
        cell.outcomes, cell.statuses, cell.lrs_by_round = {}, {}, []
        b = cell.base
        edge = 2 / b.curvature * 0.999 if b.dataset == "quadratic" else TRUTH[b.norm] * rng.lognormal(0, spread)
        lrs = list(cell.initial)
        while lrs:
            for lr in lrs:
                cell.outcomes[lr], cell.statuses[lr] = lr <= edge, "completed" if lr <= edge else "diverged"
            cell.lrs_by_round.append(lrs)
            lrs = propose(cell.outcomes, sw.search)
        cell.rounds = len(cell.lrs_by_round)


def searched_cells(seeds: int, spread: float, rng: np.random.Generator):
    """lr_boundary at the cpu scale with `seeds` seeds, searched (simulate): the sweep and its cells."""
    sw = load_sweep("lr_boundary", "cpu", seeds=seeds)
    cells = make_cells(sw)
    simulate(sw, cells, spread, rng)
    return sw, cells


def search(results: Path, seeds: int, spread: float, rng: np.random.Generator) -> None:
    """The simulated search's `boundaries` table, and one fake trial per variant and seed, so that the analysis
    finds the vgg11 setting."""
    sw, cells = searched_cells(seeds, spread, rng)
    write_boundaries(str(results), cells, sw)
    for seed in range(seeds):
        for norm in TRUTH:
            write_fake_trial(results, FakeTrial(norm, 0.1, seed=seed, steps=60, probe_every=1000, eval_every=60))


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    search(root, 3, 0.15, np.random.default_rng(3))
    return root


def test_boundaries_over_seeds_and_the_ratio(searched, capsys):
    data = load(searched)
    groups = {(r["setting"], r["cell_label"]): r for r in clr.over_seeds(data, Bootstrap())}
    none, batch = groups["vgg11", "none"], groups["vgg11", "batch"]
    per_seed = clr.per_seed(data)
    for row, norm in ((none, "none"), (batch, "batch")):
        mine = per_seed[(per_seed["setting"] == "vgg11") & (per_seed["norm"] == norm)]
        assert row["seeds"] == 3 and row["lower"].seeds == 3 and row["lower"].has_interval
        assert row["lower"].value == pytest.approx(math.exp(np.log(mine["lower"]).mean()))  # geometric mean
        assert row["lower"].low <= row["lower"].value <= row["lower"].high
        assert row["upper"].value > row["lower"].value
    # The calibration cells: every seed brackets 2/curvature the same way, so the interval has no width.
    calib = groups["linear", "none (curvature 1.5)"]
    assert calib["lower"].low == calib["lower"].high <= 2 / 1.5 <= calib["upper"].low
    (ratio,) = [r["ratio"] for r in clr.ratios(data, Bootstrap()) if r["label"] == "batch / none"]
    assert ratio.has_interval and ratio.low <= ratio.value <= ratio.high and 4 < ratio.value < 16
    assert set(ratio.labels) == {0, 1, 2}
    # C1 judged per seed from each seed's own brackets.
    c1 = {c.key: c for c in check_claims(data)}["C1"]
    assert c1.verdict_text() == "supported, 3 of 3 seeds"
    (case,) = [c for c in c1.cases if c["setting"] == "vgg11"]
    assert case["source"] == "boundaries" and case["over_seeds"]["batch lower lr"].has_interval
    # bnsweep check: the brackets with their intervals and the ratio with its own.
    assert check(str(searched)) == 0
    out = capsys.readouterr().out
    assert "critical learning rate over seeds" in out and "vgg11 batch / none: critical-rate ratio" in out
    assert f"vgg11 none: lower {none['lower'].text()}, upper {none['upper'].text()} (3 seeds)" in out
    doc = json.loads((searched / "claims.json").read_text())
    assert {r["label"] for r in doc["critical_lr"]["ratios"]} == {"batch / none", "noisy_batch / none"}


def test_critical_lr_coverage_through_the_search():
    """The batch / none ratio's interval over 20 seeds, through the search's own brackets (resolution 1.25x), its
    rows and the analysis, holds the true ratio of 8 at about the nominal rate. In memory: the rows bnsweep
    writes, as the analysis reads them."""
    rng = np.random.default_rng(8)
    trials = pd.DataFrame({"arch": ["vgg11"], "width": [0.125], "dataset": ["fashion-mnist"],
                           "setting": pd.Categorical(["vgg11"]), "seed": [0]})
    sw, cells = searched_cells(20, 0.2, rng)
    hits, draws = 0, 40
    for _ in range(draws):
        simulate(sw, cells, 0.2, rng)
        rows = pd.DataFrame([r for r in boundary_rows(cells, sw) if r["arch"] == "vgg11"])
        (ratio,) = [r["ratio"] for r in clr.ratios(Results("mem", {"trials": trials, "boundaries": rows}), BOOT)
                    if r["label"] == "batch / none"]
        hits += ratio.low <= TRUTH["batch"] / TRUTH["none"] <= ratio.high
    assert hits / draws >= 0.8


def test_one_seed_search_has_no_interval(tmp_path):
    search(tmp_path, 1, 0.15, np.random.default_rng(4))
    data = load(tmp_path)
    (ratio,) = [r["ratio"] for r in clr.ratios(data, Bootstrap()) if r["label"] == "batch / none"]
    assert not ratio.has_interval and ratio.note == "1 seed: no interval"
    lines = clr.report(data, Bootstrap())
    assert any("(1 seed: no interval)" in line for line in lines)


def test_a_seeds_view_keeps_only_that_seed(searched):
    from analysis.seeds import for_seed

    data = load(searched)
    view = for_seed(data, 1)
    assert set(view.trials["seed"]) == {1}
    b = view["boundaries"]
    assert len(b) and b["all_seeds"].all() and (b["seed"] == 1).all() and (b["seeds"] == 1).all()
    assert isinstance(view, Results)

