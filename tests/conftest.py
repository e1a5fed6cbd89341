"""Shared fixtures. Expensive things (a smoke sweep on real Ray) run once per session."""

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


@pytest.fixture
def one_thread():
    """One torch thread: the probe and dynamics tests are tiny, and on a shared machine a second OpenMP thread
    mostly spins waiting for a busy core (10x slower at times). Bit-identity holds at any fixed thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fmnist():
    """Real Fashion-MNIST (Debian's dataset-fashion-mnist, installed by .ci/run)."""
    from bnsweep.data import load_dataset

    return load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """`bnsweep run lr_grid --scale smoke` on an embedded local Ray: real trials, real Parquet, every table."""
    import io

    from bnsweep.driver import run_sweep

    results = tmp_path_factory.mktemp("smoke") / "lr_grid"
    log = io.StringIO()
    run_sweep("lr_grid", scale="smoke", results=str(results), stream=log)
    return results, log.getvalue()
