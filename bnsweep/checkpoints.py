"""A running trial's checkpoints: where Tune keeps them, reading them safely, deleting them once recorded.

Tune writes them under RESULTS/_ray/<sweep>/<trial_id>/checkpoint_NNNNNN/ (trial.pt and step.txt). A results
directory may be a shared bucket, so a checkpoint is data, never code; and it is tied to its trial: it records the
trial's id and the shapes it holds, and one that does not fit the trial (`fits` says why) is refused like one that
would run code, so the trial resumes from an older checkpoint or starts over, instead of failing on every retry.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from bnsweep import records

RAY_DIR = "_ray"  # Tune's experiment state and checkpoints; underscore: ignored by Parquet readers
# Why a checkpoint's state cannot resume the trial at hand (None: it can): bnsweep.trial.Trial.checkpoint_problem.
Fits = Callable[[dict], str | None]


def refuse(path: str, reason: str) -> None:
    """The one-line warning of a refused checkpoint, naming the file and why."""
    print(f"bnsweep: warning: refusing checkpoint {path}: {reason}; resuming from an older checkpoint or step 0",
          file=sys.stderr, flush=True)


def read_checkpoint(path: str, fs: pafs.FileSystem | None = None, fits: Fits | None = None) -> dict | None:
    """A trial's checkpoint, or None when it cannot be used: cut off mid-write, holding anything but tensors and
    plain types, or (`fits`) of another trial or of other shapes. torch.load(weights_only=True) refuses every
    pickled object outside that set without running it."""
    import torch

    try:
        if fs is None:
            with open(path, "rb") as f:
                blob = f.read()
        else:
            with fs.open_input_stream(path) as f:
                blob = f.read()
        state = torch.load(io.BytesIO(blob), weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        refuse(path, f"it holds more than tensors and plain types ({reason})")
        return None
    except (OSError, pa.ArrowException, RuntimeError, EOFError):
        return None  # a checkpoint cut off mid-write: fall back to an older one or step 0
    problem = fits(state) if fits is not None else None
    if problem:
        refuse(path, problem)
        return None
    return state


def _checkpoint_dirs(fs: pafs.FileSystem, trial_dir: str) -> list[pafs.FileInfo]:
    found = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
    return [i for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]


def latest_checkpoint(results: str, sweep_name: str, trial_id: str, fits: Fits | None = None) -> dict | None:
    """The newest readable checkpoint of a trial left by any earlier run, by step (with `fits`: the newest that
    fits the trial)."""
    fs, root = records.filesystem(results)
    candidates = []
    for info in _checkpoint_dirs(fs, f"{root}/{RAY_DIR}/{sweep_name}/{trial_id}"):
        try:
            with fs.open_input_stream(f"{info.path}/step.txt") as f:
                candidates.append((int(f.read().decode()), info.path))
        except (OSError, ValueError, pa.ArrowException):
            continue
    for _, path in sorted(candidates, reverse=True):
        state = read_checkpoint(f"{path}/trial.pt", fs, fits)
        if state is not None:
            return state
    return None


def prune_checkpoints(results: str, sweep_name: str, trial_ids: list[str] | set[str]) -> int:
    """Delete the checkpoints of trials whose records are written (they will never resume); returns how many
    checkpoint folders went. Tune's own result files in the trial's folder stay."""
    fs, root = records.filesystem(results)
    gone = 0
    for trial_id in trial_ids:
        for info in _checkpoint_dirs(fs, f"{root}/{RAY_DIR}/{sweep_name}/{trial_id}"):
            with contextlib.suppress(OSError, pa.ArrowException):  # already gone: fine
                fs.delete_dir(info.path)
                gone += 1
    return gone


# What a trial's checkpoint holds (trial.Trial.state_dict) and the shapes it records of them.
STATE_KEYS = {"trial_id", "shapes", "step", "status", "diverged_step", "initial_loss", "wall_time", "model",
              "optimizer", "sampler", "noise_generator", "augment_generator", "history", "evals", "probes"}


def held_shapes(state: dict[str, Any]) -> dict[str, Any]:
    """The shapes of a trial state's tensors: each model tensor by name, each momentum buffer (None before its
    first step), the loss history, the random streams. Plain lists, so a checkpoint records them as data."""
    def shape(t) -> list[int] | None:
        return None if t is None else list(t.shape)

    return {"model": {name: shape(t) for name, t in state["model"].items()},
            "optimizer": [shape(b) for b in state["optimizer"]["momentum_buffers"]],
            "history": shape(state["history"]), "noise_generator": shape(state["noise_generator"]),
            "augment_generator": shape(state["augment_generator"])}


def state_problem(state: dict[str, Any], trial_id: str, shapes_of: dict[str, Any]) -> str | None:
    """Why a checkpoint `state` cannot resume trial `trial_id`, whose tensors `shapes_of` holds as a state holds
    them (trial.Trial.shape_state), or None. It must name this trial (a checkpoint copied or
    planted from another trial of the same shapes would resume the wrong run) and hold this trial's shapes, as
    it says it does (one of other shapes fails in load_state_dict, on every retry)."""
    if not isinstance(state, dict) or "trial_id" not in state:
        return "it records no trial id (not a checkpoint of this bnsweep)"
    if state["trial_id"] != trial_id:
        return f"it is of trial {str(state['trial_id'])[:80]!r}, not of {trial_id}"
    if not STATE_KEYS <= state.keys():
        return f"it lacks {', '.join(sorted(STATE_KEYS - state.keys()))}"
    try:
        held = held_shapes(state)
    except (AttributeError, KeyError, TypeError):
        return "its tensors are malformed"
    mine = held_shapes(shapes_of)
    buffers, params = held.pop("optimizer"), mine.pop("optimizer")
    # A momentum buffer is made at the first step with momentum: None before it, and for good without.
    if held != mine or len(buffers) != len(params) or any(
            b not in (None, p) for b, p in zip(buffers, params, strict=False)):
        return "the tensors it holds have other shapes than this trial's"
    if state["shapes"] != held_shapes(state):
        return "the shapes it records are not those of the tensors it holds"
    return None
