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
