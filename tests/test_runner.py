"""bnsweep.runner: checkpoints are data (never code) and go once a trial is recorded; the progress line counts
what really runs, and its estimate comes from this machine."""

import io
import os
import re
from pathlib import Path

import pandas as pd
import torch

from bnsweep.checkpoints import RAY_DIR, latest_checkpoint, prune_checkpoints, read_checkpoint
from bnsweep.config import PROBES, make_config
from bnsweep.driver import run_sweep
from bnsweep.trial import Trial

SWEEPS = Path(__file__).resolve().parent / "sweeps"
DLN = {"arch": "dln", "norm": "batch", "lr": 1e-7, "steps": 24, "probe_every": 8, "eval_every": 8}


class _RunsCode:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def write_checkpoint(folder: Path, step: int, state) -> Path:
    folder.mkdir(parents=True)
    torch.save(state, folder / "trial.pt")
    (folder / "step.txt").write_text(str(step))
    return folder / "trial.pt"


def stopped_at(config, step: int) -> dict:
    """The state of a trial stopped at `step`: what a checkpoint holds."""
    saved = {}

    def stop(trial):
        if trial.step == step:
            saved.update(trial.state_dict())
            raise KeyboardInterrupt

    try:
        Trial(config).run(stop, callback_every=step)
    except KeyboardInterrupt:
        pass
    return saved


def test_a_probed_trial_resumes_exactly_from_a_weights_only_checkpoint(tmp_path):
    # Every probe on, noisy BatchNorm (its noise stream travels too): the state is tensors and plain types only.
    cfg = make_config({**DLN, "norm": "noisy_batch", "probes": list(PROBES), "hessian_iters": 3, "momentum": 0.9,
                       "activation_layers": [1, 12, 24]})
    whole = Trial(cfg)
    whole.run()
    path = write_checkpoint(tmp_path / "checkpoint_000000", 9, stopped_at(cfg, 9))  # mid-way to a probe
    resumed = Trial(cfg)
    resumed.load_state_dict(read_checkpoint(str(path)))
    resumed.run()
    assert torch.equal(whole.history.nan_to_num(), resumed.history.nan_to_num())  # regression: accuracy NaN
    assert whole.history[:, 0].isfinite().all() and whole.evals.keys() == resumed.evals.keys()
    for name, table in whole.tables().items():
        if name != "trials":
            pd.testing.assert_frame_equal(table.to_pandas(), resumed.tables()[name].to_pandas(), obj=name)


def test_a_checkpoint_that_would_run_code_is_refused_and_resume_falls_back(tmp_path, capsys):
    cfg = make_config(DLN)
    trial_dir = tmp_path / RAY_DIR / "lr_grid" / cfg.trial_id
    write_checkpoint(trial_dir / "checkpoint_000001", 20, stopped_at(cfg, 20))
    marker = tmp_path / "pwned"
    planted = write_checkpoint(trial_dir / "checkpoint_000002", 30, {"step": 30, "model": _RunsCode(marker)})
    state = latest_checkpoint(str(tmp_path), "lr_grid", cfg.trial_id)
    assert not marker.exists()  # the code never ran
    assert state is not None and state["step"] == 20  # the older, clean checkpoint
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(planted) in warnings[0] and "refusing checkpoint" in warnings[0]
    # Only the planted one left: resume starts at step 0, and still runs nothing.
    prune_checkpoints(str(tmp_path), "lr_grid", [cfg.trial_id])
    write_checkpoint(trial_dir / "checkpoint_000002", 30, {"step": 30, "model": _RunsCode(marker)})
    assert latest_checkpoint(str(tmp_path), "lr_grid", cfg.trial_id) is None and not marker.exists()
    torch.load(planted, weights_only=False)  # the file really would have run code, loaded the old way
    assert marker.exists()


def test_prune_removes_only_checkpoints(tmp_path):
    trial_dir = tmp_path / RAY_DIR / "s" / "t1"
    for n in (1, 2):
        write_checkpoint(trial_dir / f"checkpoint_00000{n}", n, {"step": n})
    (trial_dir / "result.json").write_text("{}")
    assert prune_checkpoints(str(tmp_path), "s", ["t1", "t2"]) == 2
    assert [p.name for p in trial_dir.iterdir()] == ["result.json"]


class Terminal(io.StringIO):
    """A stream that says it is a terminal, so the progress line is drawn at every trial start and end."""

    def isatty(self) -> bool:
        return True


def test_two_trials_at_once_are_counted_as_two_and_the_sweep_is_estimated(tmp_path):
    out = Terminal()
    results = tmp_path / "r"
    run_sweep(str(SWEEPS / "two_at_once.yaml"), scale="smoke", results=str(results), num_cpus=2, stream=out)
    text = out.getvalue()
    running = [int(n) for n in re.findall(r"running (\d+)", text)]
    assert max(running) == 2 and running[-1] == 0, running
    first = re.search(r"estimate: (\d+)m(\d+)s for 4 trials on 2 parallel slots here", text)
    assert first, text[:500]
    trials = pd.read_parquet(results / "trials")
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    # The estimate is of the right size: within 3x of the trials' own time scheduled on two slots.
    estimated = int(first[1]) * 60 + int(first[2])
    busy = trials.wall_time_s.sum() / 2
    assert busy / 3 <= max(estimated, 1) <= busy * 3, (estimated, busy)
    assert not list(results.rglob("*.pt"))  # finished trials keep no checkpoint
    assert os.path.isdir(results / RAY_DIR)
