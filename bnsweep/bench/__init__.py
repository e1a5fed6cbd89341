"""Benchmarks: `python -m bnsweep.bench trial|probes|sweep|figures`. Each prints measured ratios, never asserts."""
