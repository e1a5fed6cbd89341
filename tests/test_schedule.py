"""bnsweep.schedule: every variant has a step cost (a missing one is this failure, not a silent 1.0)."""

from bnsweep.config import NORMS
from bnsweep.schedule import NORM_STEP_COST


def test_every_variant_has_a_step_cost():
    assert set(NORM_STEP_COST) == set(NORMS)
    assert NORM_STEP_COST["none"] == 1.0 and all(cost >= 1.0 for cost in NORM_STEP_COST.values())
