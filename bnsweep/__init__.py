"""bnsweep: a sweep orchestrator for the science of normalization (Santurkar et al., 2018)."""

__version__ = "0.1.0"


def run_sweep(*args, **kwargs) -> str:
    """Run or continue a sweep from Python (a notebook); same options as `bnsweep run` (a driver.RunOptions, or
    its fields as keywords). Returns the results path."""
    from bnsweep.driver import run_sweep as _run_sweep

    return _run_sweep(*args, **kwargs)
