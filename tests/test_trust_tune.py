"""A results directory is data, never code (issue 22, items 1 and 7).

- Whoever can write a shared results directory (a bucket, a lab's NFS) plants pickles wherever Ray Tune keeps
  its state under RESULTS/_ray, and keeps rewriting every trial's `error.pkl` while a sweep runs (Tune uploads
  its own copy, the attacker's lands after it). A sweep with a trial that crashes, and the same sweep resumed,
  never run the planted code.
- A checkpoint records the trial it belongs to and the shapes it holds: one of another trial, or of other
  shapes, is refused with a one-line warning naming the file, and the trial starts over from step 0 once
  instead of failing on every retry.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from test_faults import attempt_files, bnsweep_cmd, ray_env, run_to_end  # noqa: F401
from test_runner import stopped_at

from bnsweep.checkpoints import RAY_DIR, latest_checkpoint
from bnsweep.config import make_config
from bnsweep.schema import CURVE_COLUMNS
from bnsweep.sweep import load
from bnsweep.trial import Trial, run_trial

SWEEPS = Path(__file__).resolve().parent / "sweeps"


class Payload:
    """Unpickling this creates the marker file: code ran. Built from `open` alone, so any process can run it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_everywhere(experiment: Path, trial_ids: set[str], marker: Path) -> None:
    """A payload in every file Ray Tune reads back from its storage path: the Tuner (tuner.pkl), the experiment,
    search and callback state, each trial's pickled error and parameters, and a checkpoint of each trial."""
    blob = pickle.dumps(Payload(marker))
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / "tuner.pkl").write_bytes(blob)
    state = {"_type": "CLOUDPICKLE_FALLBACK", "value": blob.hex()}
    (experiment / "experiment_state-2999-01-01_00-00-00.json").write_text(json.dumps(
        {"trial_data": [[json.dumps(state), json.dumps(state)]], "runner_data": state, "stats": state}))
    (experiment / "basic-variant-state-2999-01-01_00-00-00.json").write_bytes(blob)
    (experiment / "search_gen_state-2999-01-01_00-00-00.json").write_bytes(blob)
    (experiment / "callback-states-2999-01-01_00-00-00.pkl").write_bytes(blob)
    for trial_id in trial_ids:
        folder = experiment / trial_id
        (folder / "checkpoint_000099").mkdir(parents=True, exist_ok=True)
        for name in ("error.pkl", "params.pkl"):
            (folder / name).write_bytes(blob)
        torch.save({"step": 99, "model": Payload(marker)}, folder / "checkpoint_000099" / "trial.pt")
        (folder / "checkpoint_000099" / "step.txt").write_text("99")
        (folder / "checkpoint_000099" / "_dict_checkpoint.pkl").write_bytes(blob)


class Rewriter(threading.Thread):
    """The attacker who keeps writing: every trial's error.pkl under Tune's state, rewritten every 20 ms."""

    def __init__(self, experiment: Path, marker: Path):
        super().__init__(daemon=True)
        self.experiment, self.blob, self.stop = experiment, pickle.dumps(Payload(marker)), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for folder in list(self.experiment.glob("*/")) if self.experiment.is_dir() else []:
                try:
                    tmp = folder / ".error.pkl.planting"
                    tmp.write_bytes(self.blob)
                    os.replace(tmp, folder / "error.pkl")
                except OSError:
                    pass


def test_planted_tune_pickles_never_run_in_a_crashing_sweep_nor_its_resume(tmp_path, ray_env):  # noqa: F811
    sweep = SWEEPS / "faults_crash.yaml"  # one healthy trial, one that crashes every time it starts
    sw = load(str(sweep), "smoke")
    ids = {c.trial_id for c in sw.configs}
    (broken,) = [c.trial_id for c in sw.configs if c.device == "cuda:99"]
    results = tmp_path / "results"
    experiment = results / RAY_DIR / sw.name
    marker = tmp_path / "PWNED"
    cmd = bnsweep_cmd("run", str(sweep), "--scale", "smoke", "--results", str(results), "--num-cpus", "2")

    for run in (1, 2):  # the second: a resume after the records were lost, every trial an attempt again
        plant_everywhere(experiment, ids, marker)
        attacker = Rewriter(experiment, marker)
        attacker.start()
        try:
            out = run_to_end(cmd, ray_env, tmp_path / f"run{run}.log", timeout=300)
        finally:
            attacker.stop.set()
            attacker.join()
        assert not marker.exists(), f"run {run}: a planted pickle ran code:\n{out[-3000:]}"
        trials = pd.read_parquet(results / "trials").set_index("trial_id")
        assert sorted(trials.index) == sorted(ids)
        assert trials.loc[broken, "status"] == "failed"
        assert "'cuda:99' requested but no CUDA GPU is available" in trials.loc[broken, "error"]
        assert trials.loc[sorted(ids - {broken})[0], "status"] == "completed"
        if run == 1:
            assert len(attempt_files(results, broken)) == sw.max_failures + 1
            for f in (results / "trials").glob("*.parquet"):
                f.unlink()
    # The resumed healthy trial (its second attempt) met the planted checkpoint, refused it and started over.
    assert trials.loc[sorted(ids - {broken})[0], "attempt"] == 2


def plant_checkpoint(results: Path, sweep: str, trial_id: str, state: dict) -> Path:
    """A checkpoint in the trial's own folder, newer than any it writes, and a start of the trial already
    recorded: the trial's next start resumes from its newest checkpoint."""
    folder = results / RAY_DIR / sweep / trial_id / "checkpoint_000042"
    folder.mkdir(parents=True)
    torch.save(state, folder / "trial.pt")
    (folder / "step.txt").write_text("9999")
    (results / "_attempts" / trial_id).mkdir(parents=True)
    (results / "_attempts" / trial_id / "0-earlier").touch()
    return folder / "trial.pt"


def test_a_checkpoint_of_another_trial_or_other_shapes_is_refused_and_the_trial_starts_over(tmp_path, ray_env):  # noqa: F811
    sweep = SWEEPS / "two_at_once.yaml"  # four deep linear networks that differ only in the learning rate
    sets = ["steps=40", "eval_every=20"]
    sw = load(str(sweep), "smoke", sets=sets)
    mine, other, shaped, _ = sw.configs
    results = tmp_path / "results"
    # Another trial's checkpoint (same shapes, other learning rate) in this trial's folder: resumed, it would
    # continue the other trial's run under this one's name.
    copied = plant_checkpoint(results, sw.name, mine.trial_id, stopped_at(other, 20))
    # A checkpoint that names its trial but holds other shapes (a narrower network): loaded, it fails every time.
    narrow = make_config({**shaped.identity(), **shaped.runtime(), "width": 0.5})
    forged = stopped_at(narrow, 20) | {"trial_id": shaped.trial_id}
    assert [t.shape for t in forged["model"].values()] != [t.shape for t in Trial(shaped).model.state_dict().values()]
    wrong = plant_checkpoint(results, sw.name, shaped.trial_id, forged)

    out = run_to_end(bnsweep_cmd("run", str(sweep), "--scale", "smoke", "--results", str(results), "--num-cpus",
                                 "2", *[a for s in sets for a in ("--set", s)]), ray_env, tmp_path / "run.log",
                     timeout=300)
    trials = pd.read_parquet(results / "trials").set_index("trial_id")
    assert sorted(trials.index) == sorted(c.trial_id for c in sw.configs)
    assert (trials.status == "completed").all(), trials[["status", "error"]]
    assert trials.loc[mine.trial_id, "attempt"] == 2 and trials.loc[shaped.trial_id, "attempt"] == 2
    warnings = [line for line in out.splitlines() if line.startswith("bnsweep: warning: refusing checkpoint")]
    assert len(warnings) == 2, out[-3000:]
    assert any(str(copied) in w and f"it is of trial '{other.trial_id}', not of {mine.trial_id}" in w
               for w in warnings), warnings
    assert any(str(wrong) in w and "other shapes" in w for w in warnings), warnings
    # Each started over from step 0, once: its curve is the one a fresh run of it draws.
    curves = pd.read_parquet(results / "curves")
    for config in (mine, shaped):
        fresh = run_trial(config).history[:, 0].double().numpy()
        got = curves[curves.trial_id == config.trial_id].sort_values("step")[CURVE_COLUMNS[0]].to_numpy()
        assert len(got) == config.steps and np.allclose(got, fresh, rtol=1e-6), config.trial_id


def test_a_trial_checks_a_checkpoint_against_itself_before_loading_it(tmp_path, capsys):
    sw = load(str(SWEEPS / "two_at_once.yaml"), "smoke", sets=["steps=40", "eval_every=20"])
    mine, other = sw.configs[:2]
    trial = Trial(mine)
    assert trial.checkpoint_problem(stopped_at(mine, 20)) is None
    assert "it is of trial" in trial.checkpoint_problem(stopped_at(other, 20))
    lying = stopped_at(mine, 20)
    lying["shapes"]["history"] = [1, 1]
    assert "the shapes it records" in trial.checkpoint_problem(lying)
    assert "no trial id" in trial.checkpoint_problem({k: v for k, v in lying.items() if k != "trial_id"})
    assert "malformed" in trial.checkpoint_problem(lying | {"model": [1, 2]})
    # Found newest-first: a checkpoint that does not fit is refused with one line naming it, an older one fits.
    plant_checkpoint(tmp_path, sw.name, mine.trial_id, stopped_at(mine, 20))
    folder = tmp_path / RAY_DIR / sw.name / mine.trial_id / "checkpoint_000043"
    folder.mkdir()
    torch.save(stopped_at(other, 30), folder / "trial.pt")
    (folder / "step.txt").write_text("99999")
    resumed = run_trial(mine, find_state=lambda t: latest_checkpoint(str(tmp_path), sw.name, mine.trial_id,
                                                                     t.checkpoint_problem))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(folder / "trial.pt") in err[0] and "it is of trial" in err[0]
    assert resumed.status == "completed"
    assert torch.equal(resumed.history.nan_to_num(), run_trial(mine).history.nan_to_num())
