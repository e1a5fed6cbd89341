"""A sweep is a plan of rounds computed from the records: given the trials recorded so far, which trials next.

A grid is a one-round plan (GridPlan, here); the critical-learning-rate search is a plan of many rounds
(bnsweep/boundary.py's SearchPlan). Plans are pure: no Ray, no files but the results they are handed, so they
are tested without a cluster. bnsweep/driver.py runs any plan: it asks for a round, hands its trials to the
executor, reads the records back, and asks again until the plan has nothing left to run.
"""

from __future__ import annotations

from typing import Any, Protocol

from bnsweep.config import TrialConfig
from bnsweep.sweep import Sweep

Known = dict[str, dict[str, Any]]  # trial_id -> its recorded status and trained outcome


def settled(known: Known, trial_id: str, fresh: set[str]) -> bool:
    """Whether a trial's record stands: it finished, or it failed in this invocation (`fresh`). A trial that
    failed in an earlier invocation is run again, once per invocation."""
    row = known.get(trial_id)
    return row is not None and (row["status"] != "failed" or trial_id in fresh)


class Plan(Protocol):
    dry_run_title: str | None  # the heading of a --dry-run listing of the first round, if any

    def describe(self) -> str | None: ...  # what the plan will do, printed before it starts

    def first_round(self) -> list[TrialConfig]: ...  # what --dry-run lists

    def next_round(self, known: Known, fresh: set[str]) -> list[TrialConfig]: ...  # empty: the plan is done

    def asked(self) -> list[str]: ...  # every trial id the plan has asked for so far

    def recorded(self, known: Known, todo: list[TrialConfig]) -> str: ...  # what the records already hold

    def after_round(self, results: str, ran: list[TrialConfig], known: Known,
                    fresh: set[str]) -> str | None: ...  # the round's line

    def finish(self, results: str) -> str | None: ...  # the plan's own closing table, after the summary


class GridPlan:
    """Every grid point once: one round of the trials without a standing record."""

    dry_run_title = None

    def __init__(self, sw: Sweep) -> None:
        self.configs = sw.configs

    def describe(self) -> str | None:
        return None

    def first_round(self) -> list[TrialConfig]:
        return list(self.configs)

    def next_round(self, known: Known, fresh: set[str]) -> list[TrialConfig]:
        return [c for c in self.configs if not settled(known, c.trial_id, fresh)]

    def asked(self) -> list[str]:
        return [c.trial_id for c in self.configs]

    def recorded(self, known: Known, todo: list[TrialConfig]) -> str:
        return (f"{len(self.configs) - len(todo)} of {len(self.configs)} trials already recorded, {len(todo)} to "
                "run")

    def after_round(self, results: str, ran: list[TrialConfig], known: Known, fresh: set[str]) -> str | None:
        return None

    def finish(self, results: str) -> str | None:
        return None
