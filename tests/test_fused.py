"""Fused cohorts (issue 21, item 3): k trials that differ only in lr and seed, trained as one model, each writing the
records it writes alone.

Tolerance, stated: the fused step runs the members' forward and backward as grouped kernels, which sum in another
order, so a fused member equals the trial alone within float rounding, not bit for bit. Over 30 steps of the MLP
(batch and none) and 20 of VGG-11 without normalization, every curve value is within a relative 1e-4 of the trial
alone (measured: at most 5e-6) and every evaluation within 1e-5 (measured: 2e-7). A BatchNorm VGG at width 0.0625 is
itself chaotic at that scale: the same trial alone, in channels_last against the contiguous layout, already differs
by 1e-3 in its first steps' gradient norms and by 1% in loss after 5 steps. So for it the test holds the fused
member to what float rounding allows: its first forward (loss, accuracy, running statistics) bit for bit, its first
gradient norm within 1e-5 and its second loss within 1e-5. That the rest is float32 rounding, amplified, and not
the fusion: in float64 the same fused member equals its trial alone over 10 steps to 1e-12 (measured: losses within
4e-15, gradient norms 8e-14, weights and BatchNorm statistics a relative 1e-14), while in float32 it drifts from 5e-6
(the first gradient norm) to 2% (loss, step 5).
"""

import dataclasses
import io
from pathlib import Path

import pandas as pd
import pytest
import torch

from bnsweep import cli, records
from bnsweep.checkpoints import RAY_DIR
from bnsweep.cohorts import cohorts
from bnsweep.config import make_config
from bnsweep.driver import run_sweep
from bnsweep.errors import BnsweepError
from bnsweep.fused import Cohort, cohort_problem, run_cohort
from bnsweep.trial import Trial, run_trial

SMALL = {"width": 0.0625, "dataset": "fashion-mnist", "eval_subset": 200, "test_subset": 200, "probe_every": 0,
         "threads": 1}
CURVE_RTOL, EVAL_ATOL = 1e-4, 1e-5


def pair(**kw):
    """Two trials that differ in lr and seed: a cohort."""
    return [make_config({**SMALL, **kw, "lr": 0.02, "seed": 1}), make_config({**SMALL, **kw, "lr": 0.05, "seed": 2})]


def tables_of(results) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(results / name).sort_values(["trial_id", *(["step"] if name != "trials" else [])])
            .reset_index(drop=True) for name in ("curves", "trials")}


@pytest.mark.parametrize("arch, norm, steps", [("mlp", "batch", 30), ("mlp", "none", 30), ("vgg11", "none", 20)])
def test_a_fused_pair_writes_the_tables_of_two_separate_trials(fmnist, tmp_path, one_thread, arch, norm, steps):
    configs = pair(arch=arch, norm=norm, steps=steps, eval_every=10)
    for c in configs:
        run_trial(c, tmp_path / "alone", data=fmnist)
    run_cohort(configs, tmp_path / "fused", data=fmnist)
    alone, fused = tables_of(tmp_path / "alone"), tables_of(tmp_path / "fused")
    a, f = alone["curves"], fused["curves"]
    assert list(a.columns) == list(f.columns) and list(a.trial_id) == list(f.trial_id) and list(a.step) == list(f.step)
    for col in ("loss", "grad_norm"):
        assert ((a[col] - f[col]).abs() <= CURVE_RTOL * a[col].abs()).all(), col
    assert (a.accuracy == f.accuracy).all()
    for col in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert a[col].isna().equals(f[col].isna()) and ((a[col] - f[col]).abs().dropna() <= EVAL_ATOL).all(), col
    a, f = alone["trials"], fused["trials"]
    assert list(a.columns) == list(f.columns)
    same = ["trial_id", "status", "trained", "diverged_step", "steps_done", "lr", "seed", "arch", "norm"]
    assert a[same].equals(f[same]) and (a.status == "completed").all()
    assert not f.channels_last.any()  # the cohort's members run contiguous (a runtime option, recorded)


def test_a_fused_batchnorm_vgg_member_matches_its_trial_alone_to_float_rounding(fmnist, one_thread):
    configs = pair(arch="vgg11", norm="batch", steps=10, channels_last=False)
    alone, cohort = Trial(configs[0], fmnist), Cohort(configs, fmnist)
    member = cohort.members[0]
    for t in range(2):
        alone.train_step(t)
        cohort.train_step(t)
    a, f = alone.history[:2], member.history[:2]
    assert torch.equal(a[0, :2], f[0, :2])  # the first forward: the same loss and accuracy, bit for bit
    assert torch.isclose(a[0, 2], f[0, 2], rtol=1e-5) and torch.isclose(a[1, 0], f[1, 0], rtol=1e-5)
    # Each member's BatchNorm statistics are its own: after the first step's forward, exactly those of the trial
    # alone, and different from the other member's (another batch, another init).
    fresh = Cohort(configs, fmnist)
    fresh.train_step(0)
    single = Trial(configs[1], fmnist)
    single.train_step(0)
    for name, b in single.model.named_buffers():
        assert torch.equal(b, dict(fresh.members[1].model.named_buffers())[name]), name
    means = [m.model.blocks[0].norm.running_mean for m in fresh.members]
    assert not torch.equal(means[0], means[1])


def test_in_float64_a_fused_batchnorm_vgg_member_equals_its_trial_alone_to_1e_12(fmnist, one_thread):
    """The BatchNorm VGG's fused drift is float32's: under vmap F.batch_norm normalizes each member by its own batch's
    statistics, exactly, so in float64 the member and its trial alone agree to float64 rounding for 10 steps."""
    few = dataclasses.replace(fmnist, train_x=fmnist.inputs(fmnist.train_x[:1024]).double(),
                              train_y=fmnist.train_y[:1024], test_x=fmnist.inputs(fmnist.test_x[:256]).double(),
                              test_y=fmnist.test_y[:256])  # already normalized: Dataset.inputs passes it through
    configs = pair(arch="vgg11", norm="batch", steps=10, channels_last=False)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the models are built in float64
    try:
        alone, cohort = Trial(configs[1], few), Cohort(configs, few)
        for t in range(10):
            alone.train_step(t)
            cohort.train_step(t)
    finally:
        torch.set_default_dtype(default)
    member = cohort.members[1]
    assert next(member.model.parameters()).dtype == torch.float64
    assert torch.allclose(alone.history, member.history, rtol=1e-12, atol=0)
    for (name, a), b in zip([*alone.model.named_parameters(), *alone.model.named_buffers()],
                            [*member.model.parameters(), *member.model.buffers()], strict=True):
        if a.is_floating_point():  # a conv's bias before BatchNorm gets a zero gradient, exactly: rounding, ~1e-15
            assert (a - b).abs().max() <= 1e-12 * max(a.abs().max().item(), 1.0), name


def test_a_diverging_member_is_dropped_at_its_step_and_the_others_go_on(fmnist, tmp_path, one_thread):
    common = {**SMALL, "arch": "mlp", "norm": "none", "steps": 60, "eval_every": 20}
    configs = [make_config({**common, "lr": 0.05, "seed": 1}), make_config({**common, "lr": 5.0, "seed": 3}),
               make_config({**common, "lr": 0.02, "seed": 2})]
    alone = run_trial(configs[1], tmp_path / "alone", data=fmnist)
    assert alone.status == "diverged"
    members = run_cohort(configs, tmp_path / "fused", data=fmnist)
    assert [m.status for m in members] == ["completed", "diverged", "completed"]
    trials = pd.read_parquet(tmp_path / "fused" / "trials").set_index("trial_id")
    assert len(trials) == 3
    bad = trials.loc[configs[1].trial_id]
    assert bad.status == "diverged" and bad.diverged_step == alone.diverged_step and bad.steps_done == alone.step
    for c in (configs[0], configs[2]):
        assert trials.loc[c.trial_id].status == "completed" and trials.loc[c.trial_id].steps_done == 60
    curves = pd.read_parquet(tmp_path / "fused" / "curves")
    assert (curves.groupby("trial_id").step.max().loc[configs[1].trial_id]) == alone.step - 1
    # The survivors' curves are those they write alone: the dropped member took nothing of theirs with it.
    survivor = run_trial(configs[2], tmp_path / "survivor", data=fmnist)
    fused = curves[curves.trial_id == configs[2].trial_id].sort_values("step").loss.to_numpy()
    assert abs(fused - survivor.history[:, 0].double().numpy()).max() <= CURVE_RTOL * abs(fused).max()
    assert set(records.finished_trial_ids(tmp_path / "fused")) == {c.trial_id for c in configs}


@pytest.mark.parametrize("change, message", [
    ({"arch": "vgg11"}, "arch differs between"),
    ({"batch_size": 64}, "batch_size differs between"),
    ({"probe_every": 10}, "probe_every=10: probes are not fused yet"),
    ({"norm": "noisy_batch"}, "norm 'noisy_batch' is not fused yet"),
])
def test_a_cohort_that_cannot_be_fused_is_refused_in_one_line(change, message):
    base = {**SMALL, "arch": "mlp", "norm": "batch", "steps": 5}
    first = make_config({**base, "lr": 0.1, "seed": 1})
    other = make_config({**base, **change, "lr": 0.2, "seed": 2})
    configs = [first, other] if "differs" in message else [make_config({**base, **change, "seed": s}) for s in (1, 2)]
    problem = cohort_problem(configs)
    assert problem is not None and message in problem and "\n" not in problem
    with pytest.raises(BnsweepError, match=message.split(":")[0]):
        Cohort(configs)


def test_the_same_trial_twice_is_not_a_cohort():
    c = make_config({**SMALL, "arch": "mlp", "steps": 5})
    assert "the same trial twice" in cohort_problem([c, c])


# -- bnsweep run --fuse K ---------------------------------------------------------------------------------------

FUSE_SWEEP = Path(__file__).resolve().parent / "sweeps" / "fuse.yaml"


def test_cohorts_group_same_shaped_trials_up_to_k_and_leave_the_rest_alone():
    base = {**SMALL, "arch": "mlp", "steps": 5}
    batch = [make_config({**base, "norm": "batch", "lr": lr}) for lr in (0.1, 0.2, 0.3)]
    other = make_config({**base, "norm": "none", "lr": 0.1})
    probed = [make_config({**base, "norm": "none", "probe_every": 2, "lr": lr}) for lr in (0.1, 0.2)]
    units = cohorts([batch[0], other, batch[1], *probed, batch[2]], 2)
    assert units == [[batch[0], batch[1]], [other], [probed[0]], [probed[1]], [batch[2]]]


def test_run_fuse_trains_cohorts_as_one_tune_trial_each_and_records_every_member(tmp_path):
    results = tmp_path / "r"
    out = io.StringIO()
    run_sweep(str(FUSE_SWEEP), scale="smoke", results=str(results), fuse=2, num_cpus=2, stream=out)
    text = out.getvalue()
    assert "fused: 2 trials in 1 cohort of up to 2, 2 alone" in text and "[4/4] completed 4" in text
    trials = pd.read_parquet(results / "trials")
    assert len(trials) == 4 and (trials.status == "completed").all() and (trials.attempt == 1).all()
    curves = pd.read_parquet(results / "curves")
    assert curves.groupby("trial_id").step.apply(sorted).map(list).eq([list(range(20))] * 4).all()
    # One Tune trial (one task) per cohort: three for four trials, each named by its first member.
    tune_trials = [p for p in (results / RAY_DIR / "fuse").iterdir() if p.is_dir()]
    assert len(tune_trials) == 3 and {p.name for p in tune_trials} < set(trials.trial_id)
    # A fused member's records are those it writes alone (the DLN at these rates: equal within float rounding).
    member = make_config({"arch": "dln", "norm": "batch", "lr": 2e-6, "probe_every": 0, "steps": 20, "eval_every": 10,
                          "threads": 1})
    alone = run_trial(member, tmp_path / "alone")
    fused = curves[curves.trial_id == member.trial_id].sort_values("step").loss.to_numpy()
    assert abs(fused - alone.history[:, 0].double().numpy()).max() <= CURVE_RTOL * abs(fused).max()
    # Resume: a recorded member is not run again; one whose record is gone is, alone (its partner is recorded).
    (results / "trials" / f"{member.trial_id}.parquet").unlink()
    again = io.StringIO()
    run_sweep(str(FUSE_SWEEP), scale="smoke", results=str(results), fuse=2, num_cpus=2, stream=again)
    assert "(3 of 4 trials already recorded, 1 to run)" in again.getvalue()
    assert "fused: 0 trials in 0 cohorts of up to 2, 1 alone" in again.getvalue()
    trials = pd.read_parquet(results / "trials").set_index("trial_id")
    assert len(trials) == 4 and trials.attempt.to_dict() == {t: 2 if t == member.trial_id else 1 for t in trials.index}


@pytest.mark.parametrize("value, message", [
    ("0", "--fuse=0: out of range; use a whole number from 1 to 64"),
    ("-3", "--fuse=-3: out of range"),
    ("two", "argument --fuse: 'two': not a number"),
    ("2.5", "argument --fuse: '2.5': not a whole number"),
])
def test_a_bad_fuse_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, value, message):
    results = tmp_path / "r"
    assert cli.main(["run", str(FUSE_SWEEP), "--scale", "smoke", "--results", str(results), f"--fuse={value}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err and not results.exists()


def test_fuse_refuses_a_sweep_with_probes_naming_probe_every(tmp_path, capsys):
    results = tmp_path / "r"
    assert cli.main(["run", "lr_grid", "--scale", "smoke", "--results", str(results), "--fuse", "2"]) == 2
    err = capsys.readouterr().err
    assert "--fuse 2: probes are not fused" in err and "probe_every=" in err and "--set probe_every=0" in err
    assert err.count("\n") == 1 and not results.exists()
    with pytest.raises(BnsweepError, match="--fuse=0: out of range"):
        run_sweep(str(FUSE_SWEEP), scale="smoke", results=str(results), fuse=0, stream=io.StringIO())


def test_a_crashing_cohort_is_retried_then_every_member_is_recorded_failed(tmp_path):
    """faults_crash.yaml at two rates per grid: the broken cohort asks for a device no worker has, so it raises at
    every start; Tune retries it (max_failures), then each member is recorded failed with the error, and the healthy
    cohort completes. (The healthy grid is as large as the broken one so the driver's timing pass, which measures
    the first of the costliest kinds, measures a healthy trial, as in tests/test_faults.py.)"""
    results, out = tmp_path / "r", io.StringIO()
    sweep = str(Path(__file__).resolve().parent / "sweeps" / "faults_crash.yaml")
    run_sweep(sweep, scale="smoke", results=str(results), sets=["healthy.lr=[1e-6, 2e-6]", "broken.lr=[1e-6, 2e-6]"],
              fuse=2, num_cpus=2, stream=out)
    assert "fused: 4 trials in 2 cohorts of up to 2, 0 alone" in out.getvalue()
    trials = pd.read_parquet(results / "trials").set_index("trial_id")
    broken = trials[trials.device == "cuda:99"]
    assert len(trials) == 4 and len(broken) == 2 and (broken.status == "failed").all()
    assert broken.error.str.contains("'cuda:99' requested but no CUDA GPU is available").all()
    assert (broken.attempt == 3).all()  # max_failures 2: three starts, each member's attempt marked at each
    assert (trials[trials.device != "cuda:99"].status == "completed").all() and "failed 2" in out.getvalue()
