"""The training step's numerics (issue 21, item 2): --precision changes the step and is recorded, --deterministic
is set and recorded, probes and evaluations measure in full fp32 whatever the step uses, and probes never change
the curves in a lowered precision either. The CUDA bit-identity under --deterministic runs where a GPU is."""

import os

import pandas as pd
import pytest
import torch

from bnsweep import numerics
from bnsweep.cli import main
from bnsweep.config import make_config
from bnsweep.errors import BnsweepError
from bnsweep.trial import Trial, run_trial

SMALL = {"arch": "vgg11", "width": 0.0625, "dataset": "fashion-mnist", "norm": "batch", "lr": 0.1, "steps": 4,
         "eval_every": 4, "eval_subset": 256, "test_subset": 256, "threads": 1}
PROBED = {"probe_every": 2, "probes": ["landscape", "bn_identity", "activations"]}


@pytest.fixture(autouse=True)
def restore_numerics():
    """A trial pins process-wide flags: put torch's back for the tests that follow."""
    saved = numerics.tf32_state(), torch.are_deterministic_algorithms_enabled(), os.environ.get(
        "CUBLAS_WORKSPACE_CONFIG")
    yield
    numerics.set_tf32(saved[0][0])
    torch.use_deterministic_algorithms(saved[1])
    torch.backends.cudnn.deterministic = False
    if saved[2] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def config(**kw):
    return make_config({**SMALL, **kw})


def ran(fmnist, **kw) -> Trial:
    trial = Trial(config(**kw), fmnist)
    trial.run()
    return trial


def test_precision_changes_the_step_and_is_recorded(fmnist, tmp_path, one_thread):
    fp32, bf16 = (run_trial(config(probe_every=0, precision=p), tmp_path / p, data=fmnist) for p in ("fp32", "bf16"))
    assert not torch.equal(fp32.history, bf16.history)  # bf16's autocast computes another step
    rows = {p: pd.read_parquet(tmp_path / p / "trials").iloc[0] for p in ("fp32", "bf16")}
    assert rows["fp32"].precision == "fp32" and rows["bf16"].precision == "bf16"
    for row in rows.values():  # TF32 off in both (bf16 is autocast, not TF32), benchmark off, not deterministic
        assert (row.matmul_fp32_precision, row.conv_fp32_precision) == ("ieee", "ieee")
        assert not row.cudnn_benchmark and not row.deterministic and not row.deterministic_algorithms
    assert fp32.config.trial_id != bf16.config.trial_id  # another step, another trial
    assert fp32.config.trial_id == make_config(SMALL | {"probe_every": 0}).trial_id


def test_tf32_sets_the_flags_for_the_step_only(fmnist, tmp_path):
    trial = run_trial(config(probe_every=0, precision="tf32"), tmp_path, data=fmnist)
    row = pd.read_parquet(tmp_path / "trials").iloc[0]
    assert (row.precision, row.matmul_fp32_precision, row.conv_fp32_precision) == ("tf32", "tf32", "tf32")
    with trial.numerics.measuring():  # what probes and evaluations run under
        assert numerics.tf32_state() == ("ieee", "ieee", "ieee")
    assert numerics.tf32_state() == ("tf32", "tf32", "tf32")


def test_deterministic_is_set_and_recorded(fmnist, tmp_path):
    run_trial(config(probe_every=0, deterministic=True), tmp_path, data=fmnist)
    row = pd.read_parquet(tmp_path / "trials").iloc[0]
    assert row.deterministic and row.deterministic_algorithms and row.cublas_workspace_config == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    Trial(config(probe_every=0), fmnist)  # the next trial pins its own: off again
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_probes_measure_in_fp32_whatever_the_step_uses(fmnist, one_thread):
    """At step 0 both runs hold the same initial weights: a bf16 run's probe rows are the fp32 run's, bit for bit
    (the probes see the step again in fp32), though the bf16 step itself differs."""
    fp32, bf16 = ran(fmnist, **PROBED), ran(fmnist, **PROBED, precision="bf16")
    a, b = fp32.probes.tables(), bf16.probes.tables()
    for table in ("landscape", "bn_identity"):
        first_a = a[table].to_pandas().query("step == 0").reset_index(drop=True)
        first_b = b[table].to_pandas().query("step == 0").reset_index(drop=True)
        assert len(first_a) > 0
        pd.testing.assert_frame_equal(first_a.drop(columns="trial_id"), first_b.drop(columns="trial_id"))
    acts = [t["activations"].to_pandas().query("step == 0")[["layer", "mean", "std", "q50"]] for t in (a, b)]
    pd.testing.assert_frame_equal(acts[0].reset_index(drop=True), acts[1].reset_index(drop=True))
    assert not torch.equal(fp32.history[:, 0], bf16.history[:, 0])


def test_a_probe_sees_float32_tensors_in_a_bf16_step(fmnist, monkeypatch):
    seen = []
    trial = Trial(config(**PROBED, precision="bf16"), fmnist)
    original = trial.probes.before_update

    def spy(t, x, y, loss):
        seen.append((loss.dtype, {p.grad.dtype for p in trial.params}, torch.is_autocast_enabled("cpu"),
                     numerics.tf32_state()))
        return original(t, x, y, loss)

    monkeypatch.setattr(trial.probes, "before_update", spy)
    trial.run()
    assert seen and all(s == (torch.float32, {torch.float32}, False, ("ieee",) * 3) for s in seen)


def test_probes_leave_a_bf16_trial_bit_identical(fmnist, one_thread):
    """The fp32 rerun of a probe step puts back running statistics, the noise stream and the step's gradients."""
    for norm in ("batch", "noisy_batch"):
        on = ran(fmnist, **PROBED, precision="bf16", norm=norm, steps=5)
        off = ran(fmnist, probe_every=0, precision="bf16", norm=norm, steps=5)
        assert torch.equal(on.history, off.history) and on.evals == off.evals, norm
        for (name, x), (_, y) in zip(on.model.state_dict().items(), off.model.state_dict().items(), strict=True):
            assert torch.equal(x, y), (norm, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the CUDA probes-on/off bit-identity "
                    "under --deterministic (the CPU's runs in tests/test_probes.py and above)")
def test_cuda_probes_on_and_off_bit_identical_under_deterministic(fmnist):
    from bnsweep.data import load_dataset

    data = load_dataset("fashion-mnist", device=torch.device("cuda"))
    kw = {"device": "cuda", "deterministic": True, "steps": 6}
    on, off = ran(data, **PROBED, **kw), ran(data, probe_every=0, **kw)
    assert torch.equal(on.history, off.history) and on.evals == off.evals


def test_a_bad_precision_is_one_line(capsys, tmp_path):
    assert main(["trial", "--precision", "fp16", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision" in err and "fp16" in err and "bf16" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(BnsweepError, match="precision"):
        make_config({"precision": "half"})


def test_bnsweep_run_takes_precision_and_deterministic_for_every_trial():
    import shlex

    from bnsweep.cli import build_parser
    from bnsweep.driver import RunOptions, numerics_sets, run_command
    from bnsweep.sweep import load

    options = RunOptions(scale="smoke", results="r", precision="bf16", deterministic=True)
    sw = load("lr_grid", "smoke", numerics_sets(options))
    assert {(c.precision, c.deterministic) for c in sw.configs} == {("bf16", True)}
    args = build_parser().parse_args(shlex.split(run_command("lr_grid", options))[1:])
    assert (args.precision, args.deterministic) == ("bf16", True)
    with pytest.raises(BnsweepError, match="--precision='fp16'"):
        numerics_sets(RunOptions(precision="fp16"))
