"""bnsweep.plan and the search's plan: rounds computed from records, without Ray. The critical-learning-rate
search runs here on a simulated outcome (gradient descent on a quadratic trains exactly below 2/curvature) and
reaches the brackets the Ray test (tests/test_boundary.py) reaches with real trials."""

from __future__ import annotations

from collections.abc import Callable

from bnsweep.boundary import SearchPlan
from bnsweep.config import TrialConfig
from bnsweep.driver import make_plan
from bnsweep.plan import GridPlan, settled
from bnsweep.sweep import load


def simulate(plan, trained: Callable[[TrialConfig], bool], status: Callable[[TrialConfig], str] | None = None,
             known: dict | None = None) -> tuple[dict, int]:
    """The driver's loop with an outcome function in place of the executor; the records and the round count."""
    known = dict(known or {})
    fresh: set[str] = set()
    rounds = 0
    while todo := plan.next_round(known, fresh):
        rounds += 1
        for c in todo:
            known[c.trial_id] = {"trial_id": c.trial_id, "status": status(c) if status else "completed",
                                 "trained": trained(c)}
        fresh |= {c.trial_id for c in todo}
    return known, rounds


def quadratic_trains(c: TrialConfig) -> bool:
    """Gradient descent on a quadratic with top eigenvalue `curvature` converges iff lr < 2 / curvature."""
    return c.lr < 2 / c.curvature


def simulated_brackets(scale: str) -> dict[float, tuple[float, float]]:
    """curvature -> (lower, upper) that the search on lr_boundary's quadratic cells reaches."""
    plan = SearchPlan(load("lr_boundary", scale))
    plan.cells = [cell for cell in plan.cells if cell.base.dataset == "quadratic"]
    simulate(plan, quadratic_trains)
    return {cell.base.curvature: (cell.bracket().lower, cell.bracket().upper) for cell in plan.cells}


def test_the_search_plan_brackets_two_over_the_curvature_without_ray():
    brackets = simulated_brackets("smoke")
    assert set(brackets) == {1.5, 3.0}
    for curvature, (lower, upper) in brackets.items():
        assert lower < 2 / curvature <= upper and upper / lower <= 1.25
    plan = SearchPlan(load("lr_boundary", "smoke"))
    known, rounds = simulate(plan, quadratic_trains)
    quadratic = [cell for cell in plan.cells if cell.base.dataset == "quadratic"]
    assert rounds >= 2 and all(cell.bracket().within(1.25) for cell in quadratic)
    assert sorted(plan.asked()) == sorted(known)  # every trial asked for was run once
    # The plan is computed from the records: replayed from them, it asks for nothing more.
    again = SearchPlan(load("lr_boundary", "smoke"))
    assert again.next_round(known, set()) == []
    assert [c.bracket() for c in again.cells] == [c.bracket() for c in plan.cells]


def test_a_grid_is_a_one_round_plan_and_failed_trials_run_once_per_invocation():
    sw = load("lr_grid", "smoke")
    plan = make_plan(sw)
    assert isinstance(plan, GridPlan) and plan.first_round() == sw.configs
    known, rounds = simulate(plan, lambda c: True)
    assert rounds == 1 and set(known) == {c.trial_id for c in sw.configs}
    # A trial that failed in an earlier invocation runs again; one that failed in this one does not.
    failed = sw.configs[0].trial_id
    known[failed]["status"] = "failed"
    assert not settled(known, failed, set()) and settled(known, failed, {failed})
    assert [c.trial_id for c in plan.next_round(known, set())] == [failed]
    assert plan.next_round(known, {failed}) == []
    assert "12 of 13 trials already recorded, 1 to run" in plan.recorded(known, plan.next_round(known, set()))
