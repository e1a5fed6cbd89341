"""A paper-scale rehearsal on a CPU: `bnsweep run lr_grid --scale paper`, GPUs off, a few steps per trial.

Evidence (2026-11-30, 2-core AMD EPYC (KVM), no GPU, torch 2.14.1, ray 2.60.0; 3 min 18 s in all):
    8 trials (6 VGG-16 variants at lr 0.1, DLN none/batch), 6 steps each, probes and checkpoints every 3, on S3
    peak resident memory per worker: 3343 MB; one VGG-16 checkpoint: 61.5 MB; records: 79 kB per VGG-16 trial
    VGG-16 width 1, 2 threads: 0.67 s per step; a probed step costs 7.5 steps more
    ratio: 1.066 (paper-protocol trial time with probes / without: 15,000 steps, a probe every 100)

What it exercises end to end, as on a cluster: the paper's model (VGG-16 at width 1 on 32x32x3 inputs), every
probe, checkpoints through Tune, records and Tune's state on S3. The data are CIFAR-10's exact on-disk format
(cifar-10-batches-py: five pickled batches of 10,000 + a test batch of 10,000) with random pixels, written here
because CIFAR-10 cannot be downloaded on this machine; S3 is moto's server on loopback (the dev extra). What
it reports: the peak resident memory of the workers, the size of one trial's checkpoint and of its records, and
what the probes cost at this width over the paper's protocol (15,000 steps, a probe every 100).

The trials are cut to a few steps, small evaluation subsets and one learning rate per grid (`--set`), so it runs
in minutes; everything else is the paper scale's configuration.

Its other part is the fused path (bnsweep/fused.py) at smoke size on the same S3, as a user runs it: `bnsweep run
--fuse 2` of two VGG-11s at width 0.0625 on the CIFAR-10-format files, differing in lr, recorded under their own
prefix; each member's `trials` row and curve rows are read back from S3 and checked to be its own (one row, one curve
row per step it trained), and the cohort to have been one Tune trial.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from bnsweep import records
from bnsweep.checkpoints import RAY_DIR
from bnsweep.config import make_config
from bnsweep.driver import run_sweep
from bnsweep.estimate import trial_seconds
from bnsweep.schedule import measure_trial
from bnsweep.schema import CURVES, TRIALS

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


def write_cifar(root: Path, per_batch: int = 10000, seed: int = 0) -> Path:
    """CIFAR-10's python version at its real size: data_batch_1..5 and test_batch, pickled dicts with uint8 rows
    of 3072 pixels (CHW), int labels, names, as torchvision unpacks them."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


@contextlib.contextmanager
def moto_s3(bucket: str, log: Path):
    """moto's S3 server on a free loopback port with one bucket; yields (endpoint host:port, boto3 client). The
    caller sets AWS credentials in the environment (any values: moto accepts all)."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's server did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket=bucket)
        yield f"127.0.0.1:{port}", client
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 9)  # whatever of its group outlived it
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)


def sizes(results: str) -> dict[str, dict[str, int]]:
    """Bytes per trial id: its records (every table's Parquet file) and its checkpoints (each trial.pt)."""
    fs, root = records.filesystem(results)
    out: dict[str, dict[str, int]] = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root):].lstrip("/")
        parts = rel.split("/")
        if parts[0] == RAY_DIR and info.base_name == "trial.pt" and len(parts) >= 4:
            entry = out.setdefault(parts[2], {"records": 0, "checkpoints": 0, "checkpoint_files": 0})
            entry["checkpoints"] += info.size
            entry["checkpoint_files"] += 1
        elif len(parts) == 2 and not parts[0].startswith(("_", ".")) and info.base_name.endswith(".parquet"):
            entry = out.setdefault(info.base_name.removesuffix(".parquet"),
                                   {"records": 0, "checkpoints": 0, "checkpoint_files": 0})
            entry["records"] += info.size
    return out


FUSED_SWEEP = """# bench paper's fused part: smoke-size VGG-11s differing only in lr, one fused cohort (run --fuse)
description: bench paper, fused cohort
base: {{arch: vgg11, width: 0.0625, dataset: cifar10, norm: batch, probe_every: 0, steps: {steps}, eval_every: {steps},
       eval_subset: {examples}, test_subset: {examples}}}
grids:
  vgg: {{lr: {rates}}}
resources: {{cpu: 1, gpu: 0}}
threads: 1
scales:
  smoke: {{}}
"""


def fused_slice(results: str, data_root: str, folder: Path, steps: int, eval_examples: int, k: int = 2) -> str:
    """The fused path at smoke size, as a user runs it: `bnsweep run --fuse k` of k VGG-11s differing in lr (a sweep
    file written to `folder`), recorded in `results`; then, read back from there, each member's own trials row and
    curve rows, and one Tune trial for the cohort. Returns the line to print; RuntimeError if a member's records
    are missing or not its own."""
    rates = [0.1 / 2**i for i in range(k)]
    sweep = folder / "fused.yaml"
    sweep.write_text(FUSED_SWEEP.format(steps=steps, examples=eval_examples, rates=rates))
    started = time.perf_counter()
    run_sweep(str(sweep), scale="smoke", results=results, data_root=data_root, fuse=k, stream=io.StringIO())
    wall = time.perf_counter() - started
    trials = records.read_table(results, TRIALS).to_pandas()
    curves = records.read_table(results, CURVES).to_pandas()
    if sorted(trials.lr) != sorted(rates):
        raise RuntimeError(f"fused cohort: trials rows for rates {sorted(trials.lr)}, expected {sorted(rates)}")
    for row in trials.itertuples():
        mine = curves[curves.trial_id == row.trial_id]
        if sorted(mine.step) != list(range(row.steps_done)) or not len(mine):
            raise RuntimeError(f"fused member {row.trial_id}: {len(mine)} curve rows for {row.steps_done} steps done, "
                               "read back from the results")
    fs, root = records.filesystem(results)
    tune_trials = [i for i in fs.get_file_info(pafs.FileSelector(f"{root}/{RAY_DIR}/fused"))
                   if i.type == pafs.FileType.Directory]
    if len(tune_trials) != 1:
        raise RuntimeError(f"fused cohort: {len(tune_trials)} Tune trials for {k} members, expected one")
    outcomes = ", ".join(f"{t} {s}" for t, s in zip(trials.trial_id, trials.status, strict=True))
    return (f"fused: bnsweep run --fuse {k}, one cohort of {k} smoke-size VGG-11s, {steps} steps, {wall:.0f} s with "
            f"Ray's start; each member's own trials row and {steps} curve rows on S3 ({outcomes})")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench paper")
    p.add_argument("--steps", type=int, default=6, help="steps per trial (the paper runs 15,000)")
    p.add_argument("--eval-examples", type=int, default=256, help="training and test examples per evaluation")
    a = p.parse_args(argv)
    every = max(1, a.steps // 2)
    with tempfile.TemporaryDirectory(prefix="bnsweep-paper-") as tmp:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        data_root = write_cifar(tmp_path / "data")
        print(f"bench paper: CIFAR-10 format, 50,000 + 10,000 random images written in "
              f"{time.perf_counter() - started:.1f} s; lr_grid at paper scale, GPUs off, {a.steps} steps per trial, "
              f"probes every {every}, checkpoints every {every}, one rate per grid, results on S3 (moto)")
        os.environ.update(CREDENTIALS)
        with moto_s3("bnsweep-bench", tmp_path / "moto.log") as (endpoint, _):
            results = f"s3://bnsweep-bench/lr_grid?endpoint_override={endpoint}&scheme=http"
            sets = ["resources.gpu=0", "device=cpu", f"steps={a.steps}", f"eval_every={a.steps}",
                    f"probe_every={every}", f"checkpoint_every={every}", f"report_every={every}",
                    f"eval_subset={a.eval_examples}", f"test_subset={a.eval_examples}",
                    "vgg.lr=[0.1]", "noisy.lr=[0.1]", "lp.lr=[0.1]", "dln.lr=[1e-6]"]
            log = io.StringIO()
            started = time.perf_counter()
            run_sweep("lr_grid", scale="paper", results=results, sets=sets, data_root=str(data_root),
                      keep_checkpoints=True, stream=log)
            wall = time.perf_counter() - started
            trials = records.read_table(results, records.TRIALS).to_pandas()
            by_trial = sizes(results)
            fused = fused_slice(f"s3://bnsweep-bench/fused?endpoint_override={endpoint}&scheme=http", str(data_root),
                                tmp_path, a.steps, a.eval_examples)
        print("\n".join(line for line in log.getvalue().splitlines() if line.startswith(("estimate", "arch", "vgg",
                                                                                          "dln"))))
        vgg = trials[trials.arch == "vgg16"]
        print(fused)
        print(f"{len(trials)} trials in {wall:.0f} s: {({k: int(v) for k, v in trials.status.value_counts().items()})}")
        print(f"peak resident memory per worker: {trials.peak_rss_mb.max():.0f} MB (VGG-16 trials: "
              f"{vgg.peak_rss_mb.max():.0f} MB)")
        for arch, group in (("vgg16", vgg), ("dln", trials[trials.arch == "dln"])):
            rec = [by_trial.get(t, {}).get("records", 0) for t in group.trial_id]
            ckpt = [by_trial[t]["checkpoints"] / by_trial[t]["checkpoint_files"] for t in group.trial_id
                    if by_trial.get(t, {}).get("checkpoint_files")]
            print(f"{arch}: records {np.median(rec) / 1e3:.0f} kB per trial ({a.steps} steps, probes every {every}); "
                  f"one checkpoint {np.median(ckpt) / 1e6:.1f} MB" if ckpt else f"{arch}: no checkpoint written")
        # What the probes cost over the paper's protocol at this width: measured steps, a probed step, evals.
        paper = make_config({"arch": "vgg16", "dataset": "cifar10", "norm": "batch", "lr": 0.1, "steps": 15000,
                             "eval_every": 500, "probe_every": 100, "device": "cpu", "data_root": str(data_root),
                             "threads": 2})
        costs, examples = measure_trial(paper)
    with_probes = trial_seconds(paper, costs, examples)
    without = with_probes - len(range(0, paper.steps, paper.probe_every)) * costs.probe
    print(f"VGG-16 width 1 on this CPU (2 threads): {costs.step:.2f} s per step, a probed step costs "
          f"{costs.probe / costs.step:.1f} steps more; over 15,000 steps with a probe every 100")
    print(f"ratio: {with_probes / without:.3f} (paper-protocol trial time with probes / without)")
    return 0
