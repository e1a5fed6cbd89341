import os
import shutil
import textwrap
from importlib import resources

import pandas as pd
import pytest

from bnsweep import records
from bnsweep.driver import choose_scale, run_sweep
from bnsweep.errors import BnsweepError
from bnsweep.schedule import expected_cost, flops_per_example, longest_first
from bnsweep.status import status_report
from bnsweep.sweep import SCALES, available, load, sweeps_dir
from bnsweep.worker import count_attempts

EXPERIMENTS = {"lr_grid", "noisy_bn", "ics", "landscape", "dln", "lp_norms", "resnet_lr", "batch_size"}


def write(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_every_experiment_has_a_sweep_at_every_scale():
    assert EXPERIMENTS <= set(available())
    for name in EXPERIMENTS:
        for scale in SCALES:
            sweep = load(name, scale)
            assert sweep.configs and len({c.trial_id for c in sweep.configs}) == len(sweep.configs)


def test_sweeps_ship_inside_the_package():
    packaged = {p.name for p in resources.files("bnsweep.sweeps").iterdir() if p.name.endswith(".yaml")}
    assert {f"{n}.yaml" for n in EXPERIMENTS} <= packaged
    assert sweeps_dir().is_dir()


def test_lr_grid_is_wide_enough_for_the_headline():
    for scale in SCALES:
        sweep = load("lr_grid", scale)
        vgg = [c for c in sweep.configs if c.arch.startswith("vgg")]
        assert {"none", "batch", "noisy_batch"} <= {c.norm for c in vgg}
        assert any(c.arch == "dln" for c in sweep.configs)
        lrs = sorted({c.lr for c in vgg if c.norm == "none"})
        assert lrs[0] <= 0.1 and lrs[-1] >= 1.0  # from where none trains to where it cannot
        assert all(c.probe_every > 0 for c in sweep.configs)
    paper = load("lr_grid", "paper")
    assert {(c.arch, c.dataset, c.steps, c.batch_size) for c in paper.configs if c.arch != "dln"} == {
        ("vgg16", "cifar10", 15000, 128)}


def test_the_resnet_sweeps_cover_every_variant_and_batch_size():
    from bnsweep.sweep import cells

    for scale in SCALES:
        lr = load("resnet_lr", scale)
        assert {c.arch for c in lr.configs} == {"resnet20"} and {c.norm for c in lr.configs} == {
            "none", "batch", "layer", "group", "ws_group", "fixup", "skipinit", "nf"}
        per_norm = {n: sorted({c.lr for c in lr.configs if c.norm == n}) for n in {c.norm for c in lr.configs}}
        assert len(set(map(tuple, per_norm.values()))) == 1  # every variant on the same rates
        bs = load("batch_size", scale)
        assert bs.search and {c.hold_fixed for c in bs.configs} == {"examples"}
        assert all(c.steps == -(-c.examples // c.batch_size) for c in bs.configs)
        groups = cells(bs.configs)  # each batch size is a cell of its own
        assert len(groups) == len({(c.norm, c.batch_size, c.seed) for c in bs.configs})
    cpu = load("batch_size", "cpu")
    assert {16, 64, 256} <= {c.batch_size for c in cpu.configs}
    assert {c.norm for c in cpu.configs} == {"none", "batch", "group", "ws_group", "skipinit"}
    assert len({c.examples for c in cpu.configs}) == 1  # one budget of examples across batch sizes


def test_scales_overrides_and_seeds(tmp_path):
    path = write(tmp_path, """
        description: test
        base: {steps: 100, probe_every: 0}
        grids:
          a: {arch: dln, norm: [none, batch], lr: ["1e-6", 2e-6]}
        seeds: 2
        scales:
          smoke: {steps: 5, a: {lr: [1e-7]}, resources: {cpu: 0.5}}
        """)
    paper = load(path, "paper")
    assert len(paper.configs) == 2 * 2 * 2 and {c.lr for c in paper.configs} == {1e-6, 2e-6}
    assert {c.seed for c in paper.configs} == {0, 1}
    smoke = load(path, "smoke", sets=["a.norm=batch"], seeds=3)
    assert [(c.lr, c.norm, c.steps) for c in smoke.configs] == [(1e-7, "batch", 5)] * 3
    assert smoke.resources["cpu"] == 0.5 and smoke.threads == 1
    assert {c.steps for c in load(path, "smoke", sets=["steps=7"]).configs} == {7}


def test_seeds_flag_against_a_grid_that_sets_its_seed(tmp_path):
    """--seeds with a grid that names its own seeds would be silently ignored: one line naming both instead."""
    path = write(tmp_path, """
        description: test
        grids:
          a: {arch: dln, norm: none, lr: 1e-6, seed: [4, 5]}
        """)
    assert {c.seed for c in load(path, "paper").configs} == {4, 5}
    with pytest.raises(BnsweepError, match=r"--seeds 3: grid 'a' of .*s\.yaml sets its own seed \(\[4, 5\]\)"):
        load(path, "paper", seeds=3)
    with pytest.raises(BnsweepError, match="sets its own seed"):
        load(write(tmp_path, "description: t\ngrids: {a: {arch: dln, lr: 1e-6}}\n"), "paper", sets=["seed=2"],
             seeds=2)


@pytest.mark.parametrize("body, words", [
    ("grids: {a: {arch: dln, colour: red}}", ["s.yaml", "colour", "allowed"]),
    ("grids: {a: {arch: resnet}}", ["s.yaml", "arch", "resnet", "vgg11"]),
    ("grids: {a: {arch: dln, norm: bn}}", ["s.yaml", "norm", "'bn'"]),
    ("grids: {a: {arch: dln, lr: fast}}", ["s.yaml", "lr", "fast"]),
    ("grids: {a: {arch: dln}}\nresources: {cpu: many}", ["resources.cpu", "many"]),
    ("grids: {a: {arch: dln}}\nsteps: 5", ["s.yaml", "steps", "allowed"]),
    ("grids: [a, b]", ["grids", "mapping"]),
    ("grids: {a: {arch: dln}\n", ["s.yaml", "YAML"]),
])
def test_malformed_sweeps_are_one_line_errors(tmp_path, body, words):
    with pytest.raises(BnsweepError) as e:
        load(write(tmp_path, body), "paper")
    assert "\n" not in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_unknown_sweep_and_scale():
    with pytest.raises(BnsweepError, match="lr_grid"):
        load("no_such_sweep")
    with pytest.raises(BnsweepError, match="cpu"):
        load("lr_grid", "huge")


def test_default_scale_says_why(monkeypatch):
    assert choose_scale(None, "auto")[0] == "paper" and "cluster" in choose_scale(None, "auto")[1]
    assert choose_scale("smoke", None) == ("smoke", "chosen with --scale")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_scale(None, None)[0] == "cpu"


def test_flops_per_example_counts_every_product():
    # DLN: 25 bias-free 10x10 layers; MLP at width 0.125: 3 hidden layers of 64 units on 1x32x32, 10 outputs.
    assert flops_per_example("dln", 1.0, (10,), 10) == 2 * 25 * 10 * 10
    assert flops_per_example("mlp", 0.125, (1, 32, 32), 10) == 2 * (1024 * 64 + 64 * 64 * 2 + 64 * 10)
    # A 3x3 convolution with padding: every output pixel of every channel sums c_in x 9 products.
    vgg = flops_per_example("vgg11", 0.125, (1, 32, 32), 10)
    assert vgg > 2 * 32 * 32 * 8 * 9  # more than the first layer alone
    assert flops_per_example("vgg11", 0.25, (1, 32, 32), 10) > 3 * vgg  # ~4x: channels in and out both double


def _makespan(costs: list[float], workers: int) -> float:
    """Greedy list scheduling, as Tune's FIFO queue runs a grid: each free worker takes the next trial."""
    loads = [0.0] * workers
    for cost in costs:
        loads[loads.index(min(loads))] += cost
    return max(loads)


def test_the_queue_runs_the_costliest_trials_first():
    configs = load("lr_grid", "cpu").configs
    queue = longest_first(configs)
    assert sorted(c.trial_id for c in queue) == sorted(c.trial_id for c in configs)
    costs = [expected_cost(c) for c in queue]
    assert costs == sorted(costs, reverse=True)
    ranks = {c.norm: i for i, c in reversed(list(enumerate(c for c in queue if c.arch == "vgg11")))}
    assert ranks["noisy_batch"] < ranks["batch"] < ranks["none"]
    assert all(c.arch == "dln" for c in queue[-14:])  # 3000 tiny full-batch steps cost less than 600 VGG steps
    vgg_batch = [c.lr for c in queue if c.arch == "vgg11" and c.norm == "batch"]
    assert vgg_batch == sorted(vgg_batch)  # equal costs keep the sweep file's order
    # Costliest first is Graham's LPT rule: on 2 workers it ends within 7/6 of the best possible schedule (found
    # here exactly, by subset sums on costs rounded to 1/20000 of the total). (Whether it also beats the file's
    # order depends on the grid: since lr_grid's cpu scale runs noisy_batch on 4 rates and the lp variants on 1,
    # the file's order happens to end 0.6% sooner under this FLOP model.)
    unit = sum(costs) / 20000
    sizes = [max(1, round(c / unit)) for c in costs]
    reachable = 1
    for size in sizes:
        reachable |= reachable << size
    best = min(max(load, sum(sizes) - load) for load in range(sum(sizes) + 1) if reachable >> load & 1)
    slack = len(sizes) / 2  # rounding: each size is off by at most half a unit
    assert _makespan(sizes, 2) <= (4 / 3 - 1 / 6) * (best + slack)
    # Where one long trial comes last in the file, the file's order leaves a worker idle; costliest first does not.
    assert _makespan([1, 1, 1, 1, 1, 1, 6], 2) == 9 and _makespan([6, 1, 1, 1, 1, 1, 1], 2) == 6


def _most_at_once(results) -> int:
    """The most trials that ran at the same moment: each from its first start marker to its `trials` file."""
    spans = []
    for folder in (results / "_attempts").iterdir():
        start = min(int(p.name.split("-")[0]) for p in folder.iterdir())
        spans.append((start, (results / "trials" / f"{folder.name}.parquet").stat().st_mtime_ns))
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


def test_fractional_gpus_pack_several_trials_on_one_gpu(tmp_path):
    """A Ray GPU is a logical resource: with one GPU declared on this CPU machine (the trials themselves run on the
    CPU), the sweep's `resources.gpu` fraction, not the cores, decides how many trials share the GPU at once."""
    import ray

    path = write(tmp_path, """
        description: GPU packing test
        base: {arch: dln, probe_every: 0, steps: 1500, eval_every: 500}
        grids:
          dln: {norm: none, lr: [1e-7, 2e-7, 4e-7, 8e-7]}
        resources: {cpu: 0.5, gpu: 0.25}
        threads: 1
        checkpoint_every: 0
        """)
    packed = {}
    for gpu in (0.5, 0.25):
        results = tmp_path / f"gpu{gpu}"
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
                 object_store_memory=150 * 1024**2, log_to_driver=False)
        try:
            run_sweep(path, scale="paper", results=str(results), sets=[f"resources.gpu={gpu}"],
                      stream=open(os.devnull, "w"))
        finally:
            ray.shutdown()
        assert len(pd.read_parquet(results / "trials")) == 4
        packed[gpu] = _most_at_once(results)
    assert packed[0.5] == 2  # two halves of the GPU, though the 2 cores had room for four 0.5-CPU trials
    assert packed[0.25] >= 3, packed  # quarters: up to four at once


def test_smoke_lr_grid_one_row_per_grid_point_and_resume_reruns_nothing(smoke_results):
    results, log = smoke_results
    assert log.splitlines()[0].startswith("scale: smoke (")
    grid = load("lr_grid", "smoke").configs
    trials = pd.read_parquet(results / "trials")
    assert sorted(trials.trial_id) == sorted(c.trial_id for c in grid)
    assert set(trials.status) <= {"completed", "diverged"} and (trials.attempt == 1).all()
    assert set(trials.torch_threads) == {1}
    curves = pd.read_parquet(results / "curves")
    assert not curves.duplicated(["trial_id", "step"]).any()
    stamps = {p.name: p.stat().st_mtime_ns for p in (results / "trials").iterdir()}
    again = run_sweep("lr_grid", scale="smoke", results=str(results), stream=open(os.devnull, "w"))
    assert again == str(results)
    assert {p.name: p.stat().st_mtime_ns for p in (results / "trials").iterdir()} == stamps
    assert all(count_attempts(str(results), c.trial_id) == 1 for c in grid)
    assert len(pd.read_parquet(results / "trials")) == len(grid)
    text = status_report(str(results))
    assert "completed" in text and "noisy_batch" in text


def test_a_grown_sweep_runs_only_the_new_points(smoke_results, tmp_path, monkeypatch):
    results = tmp_path / "grown"
    shutil.copytree(smoke_results[0], results)
    monkeypatch.chdir(tmp_path)  # a relative --results: Ray workers run elsewhere, their records must not
    before = records.finished_trial_ids(results)
    grid = load("lr_grid", "smoke", sets=["dln.lr=[1e-6, 1e-4, 1e-5]"]).configs
    new = {c.trial_id for c in grid} - before
    assert len(new) == 2  # dln none/batch at the new rate
    run_sweep("lr_grid", scale="smoke", results="grown", sets=["dln.lr=[1e-6, 1e-4, 1e-5]"],
              stream=open(os.devnull, "w"))
    after = records.finished_trial_ids(results)
    assert after == before | new
    assert all(count_attempts(str(results), t) == 1 for t in after)


def test_figures_and_claims_from_the_smoke_sweep(smoke_results, tmp_path, capsys):
    # The smoke lr_grid carries every table the nine figures need (issue 5, acceptance 1 and 3).
    import json

    from analysis.commands import check, figures

    results, _ = smoke_results
    out = tmp_path / "figures"
    assert figures(str(results), str(out)) == 0
    printed = capsys.readouterr().out
    assert "9 figures and index.html in" in printed and "skipped" not in printed
    pngs, svgs = sorted(out.glob("*.png")), sorted(out.glob("*.svg"))
    assert len(pngs) == 9 and len(svgs) == 9 and (out / "index.html").stat().st_size > 100_000
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert check(str(results)) == 0
    claims = json.loads((results / "claims.json").read_text())
    assert {f"C{i}" for i in range(1, 7)} <= set(claims)
