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

import pandas as pd
import torch
from test_faults import attempt_files, bnsweep_cmd, ray_env, run_to_end  # noqa: F401

from bnsweep.checkpoints import RAY_DIR
from bnsweep.sweep import load

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
