"""bnsweep: a sweep orchestrator for the science of normalization (Santurkar et al., 2018)."""

__version__ = "0.1.0"
