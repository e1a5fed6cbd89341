import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bnsweep import records
from bnsweep.config import make_config
from bnsweep.errors import BnsweepError
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

    from bnsweep.optim import SGD

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
    code = ("import sys, torch; from bnsweep.optim import SGD; p = torch.zeros(2, requires_grad=True); "
            "p.grad = torch.ones(2); SGD([p], lr=0.1, momentum=0.9).step(); "
            "print(any(m.startswith('torch._dynamo') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# ---------------------------------------------------------------- ResNets, normalizer-free variants, batch size


def test_adaptive_clipping_clips_exactly_the_units_over_the_threshold():
    # Brock et al. 2021b: unit i (a row / a filter) of a weight W with gradient G is rescaled to
    # clip * max(|W_i|, eps) / |G_i| * G_i iff |G_i| / max(|W_i|, eps) > clip; a vector (bias, gain) is one unit.
    from bnsweep.optim import AGC_EPS, adaptive_clip_

    clip = 0.1
    w = torch.ones(4, 3, 2, 2) / 4  # every filter has norm sqrt(12)/4 = 0.866
    w[3] = 0  # a zero filter: its norm is floored at eps
    unit_w = torch.tensor([12**0.5 / 4] * 3 + [AGC_EPS])
    g = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    ratios = torch.tensor([0.05, 0.1, 0.3, 2.0])  # |G_i| / max(|W_i|, eps): below, at, above, above the threshold
    g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * (ratios * unit_w).view(-1, 1, 1, 1)
    bias, gbias = torch.full((3,), 0.5), torch.full((3,), 1.0)  # |g| / |b| = 2 > clip: clipped as a whole
    small, gsmall = torch.full((3,), 0.5), torch.full((3,), 0.01)
    grads = [g.clone(), gbias.clone(), gsmall.clone()]
    adaptive_clip_([w, bias, small], grads, clip)
    assert torch.equal(grads[0][:2], g[:2]) and torch.equal(grads[2], gsmall)  # at or below: untouched, bit for bit
    clipped = grads[0][2:].flatten(1).norm(dim=1)
    torch.testing.assert_close(clipped, clip * unit_w[2:])
    torch.testing.assert_close(grads[0][2:] / clipped.view(-1, 1, 1, 1), g[2:] / g[2:].flatten(1).norm(dim=1)
                               .view(-1, 1, 1, 1))  # the direction is kept
    torch.testing.assert_close(grads[1].norm(), clip * bias.norm())
    lin, glin = torch.ones(2, 5), torch.stack([torch.full((5,), 0.01), torch.full((5,), 1.0)])  # per row
    adaptive_clip_([lin], [glin], clip)
    torch.testing.assert_close(glin.norm(dim=1), torch.tensor([0.0005**0.5, clip * 5**0.5]))


def test_nf_clips_every_layer_but_the_head(fmnist):
    from bnsweep.optim import SGD

    trial = Trial(config(arch="resnet20", width=0.125, norm="nf", lr=0.1, steps=1), fmnist)
    head = set(map(id, trial.model.layer_params(20)))
    assert trial.optimizer.agc_clip == 0.01 and trial.config.agc_clip == 0.01 and trial.config.nf_alpha == 0.2
    assert {id(p) for p in trial.optimizer.clipped} == {id(p) for p in trial.params} - head and head
    assert Trial(config(arch="resnet20", width=0.125, norm="skipinit", steps=1), fmnist).optimizer.agc_clip == 0
    p = torch.ones(3, 2, requires_grad=True)
    p.grad = torch.full((3, 2), 10.0)
    SGD([p], lr=1.0, agc_clip=0.5).step()  # |G| = 10 |W| per row: clipped to 0.5 |W|, so W -> 0.5 W
    torch.testing.assert_close(p.detach(), torch.full((3, 2), 0.5))


def test_fixup_scalars_step_at_a_tenth_of_the_rate_as_in_the_authors_code(fmnist):
    """torch.optim.SGD with the Fixup authors' parameter groups (cifar_train.py: names holding 'bias' or 'scale'
    at lr / 10, the rest at lr) takes bit for bit the steps of a fixup trial's optimizer."""
    trial = Trial(config(arch="resnet20", width=0.125, norm="fixup", lr=0.4, momentum=0.9, steps=1), fmnist)
    assert trial.config.fixup_scalar_lr == 0.1
    names = dict(trial.model.named_parameters())
    slow = [n for n in names if "bias" in n or "scale" in n]
    assert len(slow) == 1 + 9 * 5 + 2  # stem bias, per unit 2 pre-biases + 2 biases + scale, head pre-bias + bias
    reference_net = copy.deepcopy(trial.model)
    ref_params = dict(reference_net.named_parameters())
    reference = torch.optim.SGD([{"params": [ref_params[n] for n in slow], "lr": 0.04},
                                 {"params": [p for n, p in ref_params.items() if n not in slow]}],
                                lr=0.4, momentum=0.9, foreach=True)
    x, y = fmnist.inputs(fmnist.train_x[:32]), fmnist.train_y[:32]
    for _ in range(3):
        for net, opt in ((trial.model, trial.optimizer), (reference_net, reference)):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    assert all(torch.equal(names[n], ref_params[n]) for n in names)
    with pytest.raises(BnsweepError, match="fixup_scalar_lr only applies to norm fixup"):
        config(arch="resnet20", norm="batch", fixup_scalar_lr=0.1)


@pytest.mark.parametrize("arch", ["resnet20", "resnet56"])
def test_every_variant_trains_three_steps_on_a_resnet(fmnist, arch):
    from bnsweep.config import NORMS

    for norm in NORMS:
        trial = Trial(config(arch=arch, width=0.125, norm=norm, lr=0.1, steps=3, batch_size=32, eval_every=3,
                             eval_subset=64, test_subset=64), fmnist)
        trial.run()
        losses = trial.history[:, 0]
        assert trial.status == "completed" and torch.isfinite(losses).all(), (arch, norm, losses)
        assert math.isfinite(trial.evals[2]["test_loss"]), (arch, norm)


def test_probe_tables_carry_each_layers_place_in_the_resnet(fmnist, tmp_path):
    run_trial(config(arch="resnet20", width=0.125, norm="batch", lr=0.1, steps=2, batch_size=32, probe_every=1,
                     probes=("ics", "layer_norms"), ics_layers=(2, 13)), tmp_path, data=fmnist)
    norms = pd.read_parquet(tmp_path / "layer_norms")
    first = norms[norms.step == 0].sort_values("layer")
    assert list(first.layer) == list(range(1, 21))
    assert list(first.position[:4]) == ["stem", "s1.b1.conv1", "s1.b1.conv2", "s1.b2.conv1"]
    assert first.position.iloc[7] == "s2.b1.conv1" and first.position.iloc[-1] == "head"
    ics = pd.read_parquet(tmp_path / "ics")
    assert set(zip(ics.layer, ics.position, strict=True)) == {(2, "s1.b1.conv1"), (13, "s2.b3.conv2")}


def test_a_batch_size_axis_holds_examples_or_steps_fixed(fmnist, tmp_path):
    for batch in (16, 64, 100):
        c = config(norm="batch", batch_size=batch, hold_fixed="examples", examples=6400)
        assert c.steps == -(-6400 // batch) and c.examples == 6400  # steps = ceil(examples / batch)
    assert config(batch_size=0, hold_fixed="examples", examples=120_000).steps == 2  # full batch: 60,000 a step
    plain = config(norm="batch", batch_size=16, steps=7)
    assert plain.hold_fixed == "steps" and plain.steps == 7 and plain.examples is None
    assert "hold_fixed" not in plain.identity()  # ids of trials from before the option are unchanged
    run_trial(config(norm="batch", lr=0.1, batch_size=64, hold_fixed="examples", examples=640, eval_every=10),
              tmp_path, data=fmnist)
    row = pd.read_parquet(tmp_path / "trials").iloc[0]
    assert (row.hold_fixed, row.examples, row.steps, row.steps_done, row.batch_size) == ("examples", 640, 10, 10,
                                                                                         64)
