"""Which trials may share one fused model (bnsweep/fused.py), and the cohorts `bnsweep run --fuse K` forms.

Options only, no torch: the executor groups a round's trials into cohorts without importing the training code, and
fused.Cohort refuses a cohort for the same reasons, in the same words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bnsweep.config import TrialConfig

MEMBER_FIELDS = ("lr", "seed")  # what may differ between the members of a cohort; everything else is shared
RUNTIME_FIELDS = ("channels_last",)  # set by the cohort itself (fused.py: its members run contiguous)
MAX_COHORT = 64


def cohort_problem(configs: Sequence[TrialConfig]) -> str | None:
    """Why these trials cannot be trained as one fused cohort, or None."""
    if not 1 <= len(configs) <= MAX_COHORT:
        return f"a fused cohort has 1 to {MAX_COHORT} trials, got {len(configs)}"
    first = configs[0]
    for c in configs[1:]:
        for f in dataclasses.fields(TrialConfig):
            if f.name not in MEMBER_FIELDS + RUNTIME_FIELDS and getattr(c, f.name) != getattr(first, f.name):
                return (f"{f.name} differs between {first.trial_id} ({getattr(first, f.name)!r}) and {c.trial_id} "
                        f"({getattr(c, f.name)!r}): a fused cohort's trials differ only in lr and seed")
    ids = [c.trial_id for c in configs]
    if len(set(ids)) != len(ids):
        return "a fused cohort holds the same trial twice: give each member its own lr or seed"
    if first.probe_every:
        return f"probe_every={first.probe_every}: probes are not fused yet; set probe_every 0 (--probe-every 0)"
    if first.norm == "noisy_batch":
        return "norm 'noisy_batch' is not fused yet (its noise is drawn inside the forward): run it unfused"
    if first.ghost_batch:
        return f"ghost_batch={first.ghost_batch}: ghost batches are not fused yet; run them unfused"
    return None


def shared(config: TrialConfig) -> tuple:
    """What the trials of one cohort must share: every option but MEMBER_FIELDS and RUNTIME_FIELDS."""
    return tuple((f.name, repr(getattr(config, f.name))) for f in dataclasses.fields(TrialConfig)
                 if f.name not in MEMBER_FIELDS + RUNTIME_FIELDS)


def cohorts(configs: Sequence[TrialConfig], k: int) -> list[list[TrialConfig]]:
    """The trials in cohorts of up to k that may share one fused model (`bnsweep run --fuse K`), in queue order (a
    cohort sits where its first member was); a trial that may share with none (probes, noisy_batch, ghost batches,
    or no same-shaped trial) is a cohort of one, run alone."""
    groups: dict[tuple, list[TrialConfig]] = {}
    for c in configs:
        groups.setdefault(shared(c), []).append(c)
    out: list[list[TrialConfig]] = []
    for group in groups.values():
        for i in range(0, len(group), k):
            chunk = list(group[i:i + k])
            out += [[c] for c in chunk] if len(chunk) > 1 and cohort_problem(chunk) else [chunk]
    position = {id(c): i for i, c in enumerate(configs)}
    return sorted(out, key=lambda u: position[id(u[0])])
