import copy
import math

import pandas as pd
import pytest
import torch

from bnsweep import records
from bnsweep.config import make_config
from bnsweep.trial import Trial, run_trial

SMALL = {"arch": "vgg11", "width": 0.0625, "dataset": "fashion-mnist", "eval_subset": 500, "probe_every": 0,
         "threads": 1}


def config(**kw):
    return make_config({**SMALL, **kw})


def test_a_trial_records_every_step_and_its_evaluations(fmnist, tmp_path):
    trial = run_trial(config(norm="batch", lr=0.1, steps=40, eval_every=20), tmp_path, data=fmnist)
    curves = pd.read_parquet(tmp_path / "curves")
    trials = pd.read_parquet(tmp_path / "trials")
    assert list(curves.step) == list(range(40)) and curves.loss.notna().all() and curves.grad_norm.gt(0).all()
    assert curves.test_acc.notna().sum() == 2 and curves.test_acc.dropna().index.tolist() == [19, 39]
    row = trials.iloc[0]
    assert row.trial_id == trial.config.trial_id and row.status == "completed" and row.steps_done == 40
    assert row.final_test_acc == curves.test_acc.iloc[-1] and 0.1 < row.final_test_acc <= 1
    assert row.lr == 0.1 and row.norm == "batch" and row.torch_threads == 1 and len(row.data_checksum) == 16
    assert row.trained == (row.final_train_acc >= row.trained_acc) and row.trained_rule == "final_train_acc >= 0.5"
    assert row.schema_version == records.SCHEMA_VERSION and row.torch_version == torch.__version__


def test_divergence_ends_the_trial_early_and_is_not_trained(fmnist, tmp_path):
    trial = run_trial(config(norm="none", lr=50.0, steps=100), tmp_path, data=fmnist)
    row = pd.read_parquet(tmp_path / "trials").iloc[0]
    curves = pd.read_parquet(tmp_path / "curves")
    assert row.status == "diverged" and not row.trained and row.steps_done < 100
    assert len(curves) == row.diverged_step + 1
    last = curves.loss.iloc[-1]
    assert not math.isfinite(last) or last > row.diverge_factor * row.initial_loss
    assert (curves.loss.iloc[:-1] <= row.diverge_factor * row.initial_loss).all()
    assert trial.status == "diverged"


def test_same_seed_same_trial_bit_for_bit(fmnist):
    runs = []
    for _ in range(2):
        t = Trial(config(norm="noisy_batch", lr=0.1, steps=15, eval_every=15, augment=True), fmnist)
        t.run()
        runs.append(t)
    assert torch.equal(runs[0].history, runs[1].history) and runs[0].evals == runs[1].evals
    other = Trial(config(norm="noisy_batch", lr=0.1, steps=15, eval_every=15, augment=True, seed=1), fmnist)
    other.run()
    assert not torch.equal(runs[0].history, other.history)


def test_a_checkpointed_trial_resumes_exactly(fmnist):
    # A trial stopped at step 20 and resumed from its state gives the same record as one never stopped:
    # model, momentum buffers, batch order, noise and augmentation streams all travel in the checkpoint.
    cfg = config(norm="noisy_batch", lr=0.05, momentum=0.9, steps=40, eval_every=10, augment=True)
    whole = Trial(cfg, fmnist)
    whole.run()
    saved = {}
    first = Trial(cfg, fmnist)

    def stop_at_20(trial):
        if trial.step == 20:
            saved.update(copy.deepcopy(trial.state_dict()))
            raise KeyboardInterrupt  # the trial is killed here

    with pytest.raises(KeyboardInterrupt):
        first.run(stop_at_20, callback_every=10)
    resumed = Trial(cfg, fmnist)
    resumed.load_state_dict(saved)
    resumed.run()
    assert torch.equal(whole.history, resumed.history)
    assert whole.evals == resumed.evals


def test_regression_uses_loss_for_trained(tmp_path):
    trial = run_trial(make_config({"arch": "dln", "norm": "batch", "lr": 1e-6, "steps": 200, "probe_every": 0}),
                      tmp_path)
    row = pd.read_parquet(tmp_path / "trials").iloc[0]
    assert row.task == "regression" and math.isnan(row.final_test_acc) and row.final_test_loss > 0
    assert row.trained == (row.final_loss < row.trained_loss_fraction * row.initial_loss)
    assert row.final_loss < row.initial_loss  # full-batch GD on the summed squared loss makes progress
    assert trial.data.train_x.shape == (1000, 10)


def test_an_error_in_training_is_recorded_as_failed(fmnist, tmp_path, monkeypatch):
    original = Trial.train_step

    def crash_at_5(self, t):
        if t == 5:
            raise RuntimeError("CUDA out of memory (simulated)")
        original(self, t)

    monkeypatch.setattr(Trial, "train_step", crash_at_5)
    trial = run_trial(config(norm="batch", lr=0.1, steps=20), tmp_path, data=fmnist)
    row = pd.read_parquet(tmp_path / "trials").iloc[0]
    assert trial.status == "failed" and row.status == "failed" and "out of memory" in row.error
    assert not row.trained
    with pytest.raises(RuntimeError):
        run_trial(config(norm="batch", lr=0.1, steps=20), None, data=fmnist, catch=False)


def test_a_test_subset_is_fixed_and_evaluates_only_those_examples(fmnist):
    whole = Trial(config(norm="batch", lr=0.1, steps=10, eval_every=10), fmnist)
    part = Trial(config(norm="batch", lr=0.1, steps=10, eval_every=10, test_subset=300), fmnist)
    assert whole.test_index is None and part.test_index.shape == (300,)
    assert part.test_index.unique().numel() == 300 and bool((part.test_index.diff() > 0).all())
    assert torch.equal(whole.eval_index, part.eval_index)  # the training subset does not move
    again = Trial(config(norm="batch", lr=0.1, steps=10, eval_every=10, test_subset=300, seed=3), fmnist)
    assert torch.equal(part.test_index, again.test_index)  # fixed by data_seed, not the trial's seed
    whole.run()
    part.run()
    assert torch.equal(whole.history, part.history)  # training is untouched
    acc = part.evals[9]["test_acc"]
    assert abs(acc * 300 - round(acc * 300)) < 1e-9 and part.eval_examples() == 500 + 300
    assert whole.config.trial_id != part.config.trial_id  # a different measurement, a different record


def test_the_step_is_torch_sgd_bit_for_bit_without_importing_the_compiler():
    import subprocess
    import sys

    from bnsweep.trial import SGD

    torch.manual_seed(0)
    ours_net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2))
    torch_net = copy.deepcopy(ours_net)
    ours = SGD(list(ours_net.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-3)
    reference = torch.optim.SGD(torch_net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=True)
    x = torch.randn(16, 6)
    for step in range(4):
        for net, opt in ((ours_net, ours), (torch_net, reference)):
            opt.zero_grad()
            out = net[:2](x) if step == 1 else net(x)  # a step where the last layer gets no gradient
            out.pow(2).sum().backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours_net.parameters(), torch_net.parameters(), strict=True))
    restored = SGD(list(ours_net.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-3)
    restored.load_state_dict(reference.state_dict())  # a checkpoint of torch.optim.SGD's
    assert all(torch.equal(a, b) for a, b in zip(restored.buffers, ours.buffers, strict=True))
    code = ("import sys, torch; from bnsweep.trial import SGD; p = torch.zeros(2, requires_grad=True); "
            "p.grad = torch.ones(2); SGD([p], lr=0.1, momentum=0.9).step(); "
            "print(any(m.startswith('torch._dynamo') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
