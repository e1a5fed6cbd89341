"""bnsweep.estimate: the schedule arithmetic and the calibration, without Ray."""

import pytest

from bnsweep.config import make_config
from bnsweep.estimate import Estimate, StepCosts, calibrate, kind, makespan, trial_seconds


def test_makespan_is_list_scheduling_in_queue_order():
    assert makespan([], 2) == 0
    assert makespan([5, 3, 3, 2], 1) == 13
    assert makespan([5, 3, 3, 2], 2) == 7  # 5 | 3+3, then 2 after 5
    assert makespan([4, 4], 4) == 4
    assert makespan([1], 2, busy=[6]) == 6  # a running trial holds a slot for its rest
    assert makespan([3, 3], 2, busy=[2, 2]) == 5


def test_trial_seconds_counts_steps_probes_and_evaluations():
    c = make_config({"arch": "dln", "steps": 600, "probe_every": 100, "eval_every": 200})
    costs = StepCosts(step=0.01, probe=0.05, eval_example=1e-4)
    assert trial_seconds(c, costs, 1000) == pytest.approx(600 * 0.01 + 6 * 0.05 + 3 * 1000 * 1e-4)


def test_calibrate_measures_each_kind_once_and_scales_the_rest():
    configs = [make_config({"arch": "dln", "norm": n, "lr": lr, "steps": 100, "probe_every": 0})
               for n in ("none", "batch") for lr in (1e-7, 1e-6)]
    measured = []

    def measure(c):
        measured.append(c.norm)
        return StepCosts(step=0.02 if c.norm == "batch" else 0.01, probe=0, eval_example=0), 0

    cost = {"none": 1.0, "batch": 2.0}
    predicted = calibrate(configs, measure, lambda c: cost[c.norm])
    assert measured == ["batch", "none"]  # costliest kind first, each kind once
    assert predicted == {c.trial_id: 100 * (0.02 if c.norm == "batch" else 0.01) for c in configs}
    assert kind(configs[0]) == kind(configs[1]) != kind(configs[2])
    # With no budget left after the first kind, the other is scaled by the relative cost.
    predicted = calibrate(configs, measure, lambda c: cost[c.norm], budget_s=0)
    assert predicted[configs[0].trial_id] == pytest.approx(1.0)


def test_the_running_estimate_learns_from_finished_trials():
    e = Estimate({"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0}, slots=2)
    assert e.total() == 20
    e.start("a", 0)
    e.start("b", 0)
    e.finish("a", 20)  # took twice the prediction
    assert e.scale == 2
    e.start("c", 20)
    assert e.left(20) == pytest.approx(20)  # b is due now (20 s predicted x 2 - 20 s run): d takes its slot, c runs on
    e.finish("b", 25, fraction_done=0.25)  # diverged after a quarter of its steps, in 25 s
    assert e.scale == pytest.approx((20 + 25) / (10 + 10 * 0.25))


def test_running_trials_reports_rescale_the_estimate_before_any_trial_ends():
    e = Estimate({"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0}, slots=2)
    e.start("a", 0)
    e.start("b", 0)
    assert e.left(0) == 20
    e.progress("a", 0.25, 6)  # a worker's start and the trial's build come before the first report
    assert e.scale == 1 and e.share_done() == pytest.approx(0.25 * 10 / 40)
    e.progress("a", 0.5, 11)  # the next quarter of a in 5 s: twice the prediction
    assert e.scale == pytest.approx(2.0)
    # a: the other half, 10 s; b (no report yet) has 9 s left of twice its prediction; then c and d, 20 s each.
    assert e.left(11) == pytest.approx(30)
    assert e.share_done() == pytest.approx(0.5 * 10 / 40)
    e.finish("a", 20)  # a's report gives way to its whole run
    assert e.scale == pytest.approx(2.0) and not e.reported
    e.progress("b", 0.25, 22)
    e.progress("b", 0.5, 23)
    e.requeue("b")  # crashed: waits for its retry, its run tells nothing
    assert e.scale == pytest.approx(2.0) and "b" not in e.started


def test_a_kind_the_flop_model_calls_cheap_is_measured_past_the_budget():
    # The cpu lr_grid: VGG kinds spend the budget; the deep linear networks' FLOPs are ~0 but their steps are not.
    vgg = [make_config({"arch": "vgg11", "norm": "batch", "lr": lr, "steps": 600, "probe_every": 0})
           for lr in (0.1, 0.2)]
    dln = [make_config({"arch": "dln", "norm": "batch", "lr": lr, "steps": 3000, "probe_every": 0})
           for lr in (1e-7, 1e-6)]
    measured = []

    def measure(c):
        measured.append(c.arch)
        return StepCosts(step=0.04 if c.arch == "vgg11" else 0.004, probe=0, eval_example=0), 0

    cost = {"vgg11": 1000.0, "dln": 1.0}
    predicted = calibrate(vgg + dln, measure, lambda c: cost[c.arch], budget_s=0)
    assert measured == ["vgg11", "dln"]
    assert predicted[dln[0].trial_id] == pytest.approx(3000 * 0.004)  # not 1/1000 of a VGG trial (0.024 s)
    assert predicted[vgg[0].trial_id] == pytest.approx(600 * 0.04)
