"""Sweep definitions (YAML). A package only so that an installed bnsweep ships them (bnsweep.sweeps)."""
