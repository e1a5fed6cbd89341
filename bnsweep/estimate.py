"""How long a sweep will take here: measured steps per kind of trial, scheduled on the sweep's slots.

Before the first trial the driver times a few steps, one probed step and one evaluation batch of each kind of
trial (everything but the learning rate and seed) on this machine, and predicts each trial's seconds from its
steps, probes and evaluations. The sweep's wall time is then the makespan of Tune's queue (costliest first) on
its parallel slots. While the sweep runs, the finished trials rescale the prediction (actual over predicted
seconds, diverged trials counted for the steps they ran), and so do the running trials, from their reports
(their pace between their first report and their last, against the prediction for those steps; a worker's start
and a trial's build before its first report would make the first reports look slow): the running estimate
learns what the first measurement missed (several trials sharing the cores, a slower machine) from the second
reports on, not only from the first trials to end, which are often the short ones that diverged early.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bnsweep.config import TrialConfig

CALIBRATION_BUDGET_S = 8.0  # the driver measures kinds, costliest first, for at most this long
CALIBRATION_SHARE = 0.02  # ... and for at most this share of the sweep's predicted core-seconds
# A kind whose measured steps the FLOP model puts under this is measured past CALIBRATION_BUDGET_S (within the
# share): on small models a step's cost is Python and kernel launches, not FLOPs. The cpu lr_grid's deep linear
# networks, left to the model after the VGG kinds spent the budget, were predicted 0.8 s and 1.1 s a trial and
# took 4.8 s and 11.6 s (14 trials of 37, on a 2-core Intel Xeon).
CHEAP_MEASURE_S = 0.05
TIMED_STEPS = 3
MEASURED_STEPS = TIMED_STEPS + 4  # the warm-up, timed, probed and following steps measure_trial runs


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 4m05s, 1h12m."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass(frozen=True)
class StepCosts:
    """Seconds a kind of trial spends: per plain step, extra per probed step, per evaluated example."""

    step: float
    probe: float
    eval_example: float


def kind(config: TrialConfig) -> str:
    """What sets a trial's cost per step: everything but its learning rate, seed and length."""
    skip = {"lr", "seed", "steps", "eval_every", "probe_every"}
    return json.dumps({k: v for k, v in config.identity().items() if k not in skip}, sort_keys=True, default=str)


def trial_seconds(config: TrialConfig, costs: StepCosts, eval_examples: int) -> float:
    """Predicted seconds of a whole trial: its steps, its probed steps and its evaluations."""
    steps = config.steps
    probes = len(range(0, steps, config.probe_every)) if config.probe_every else 0
    evals = steps // config.eval_every + (steps % config.eval_every != 0)
    return steps * costs.step + probes * costs.probe + evals * eval_examples * costs.eval_example


def calibrate(configs: Sequence[TrialConfig], measure: Callable[[TrialConfig], tuple[StepCosts, int]],
              relative_cost: Callable[[TrialConfig], float], budget_s: float = CALIBRATION_BUDGET_S,
              budget_share: float = CALIBRATION_SHARE) -> dict[str, float]:
    """Predicted seconds per trial id. Kinds are measured costliest first while the measuring costs less than
    `budget_share` of the sweep's predicted core-seconds (and `budget_s`, which a kind cheap to measure may
    pass); a kind left unmeasured is scaled from the measured ones by its relative cost (the queue's FLOP
    model)."""
    by_kind: dict[str, list[TrialConfig]] = {}
    for c in configs:
        by_kind.setdefault(kind(c), []).append(c)
    order = sorted(by_kind, key=lambda k: -sum(relative_cost(c) for c in by_kind[k]))
    total_units = sum(relative_cost(c) for c in configs)
    predicted: dict[str, float] = {}
    per_unit = 0.0
    modelled: list[TrialConfig] = []
    started = time.perf_counter()
    for k in order:
        spent = time.perf_counter() - started
        example = by_kind[k][0]
        cheap = per_unit * relative_cost(example) / max(example.steps, 1) * MEASURED_STEPS < CHEAP_MEASURE_S
        over = bool(predicted) and spent > budget_s
        if (over and not cheap) or (predicted and spent > budget_share * per_unit * total_units):
            continue
        costs, eval_examples = measure(example)
        for c in by_kind[k]:
            predicted[c.trial_id] = trial_seconds(c, costs, eval_examples)
        if not over:  # the model's seconds per unit, from the costly kinds (where FLOPs tell the cost)
            modelled += by_kind[k]
            per_unit = (sum(predicted[c.trial_id] for c in modelled)
                        / max(sum(relative_cost(c) for c in modelled), 1e-30))
    for c in configs:
        predicted.setdefault(c.trial_id, relative_cost(c) * per_unit)
    return predicted


def makespan(durations: Sequence[float], slots: int, busy: Sequence[float] = ()) -> float:
    """Wall time to run `durations` in this order on `slots` parallel slots, each taking the next trial when it
    frees (Tune's FIFO queue); `busy` are the seconds left of trials already running."""
    slots = max(1, slots)
    free = sorted(list(busy)[:slots]) + [0.0] * max(0, slots - len(busy))
    heapq.heapify(free)
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free) if free else 0.0


@dataclass
class Estimate:
    """The running estimate of a sweep: predictions per trial, rescaled by the trials that finished."""

    predicted: dict[str, float]  # trial id -> seconds, in queue order
    slots: int
    actual: float = 0.0  # seconds the finished trials took
    expected: float = 0.0  # seconds predicted for the work those trials did
    started: dict[str, float] = dataclasses.field(default_factory=dict)  # running trial id -> start time
    finished: set[str] = dataclasses.field(default_factory=set)
    # running trial id -> (share of its steps done, seconds it had run) at its first and at its last report
    first_report: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    reported: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    measured: bool = True  # False: `predicted` is only relative until the first trials finish

    @property
    def ready(self) -> bool:
        return self.measured or self._evidence()[1] > 0

    def _evidence(self) -> tuple[float, float]:
        """Seconds taken and seconds predicted for the work done so far: finished trials whole, running trials
        between their first and last reports."""
        actual, expected = self.actual, self.expected
        for t, (fraction, seconds) in self.reported.items():
            first_fraction, first_seconds = self.first_report[t]
            actual += seconds - first_seconds
            expected += self.predicted[t] * (fraction - first_fraction)
        return actual, expected

    @property
    def scale(self) -> float:
        actual, expected = self._evidence()
        return actual / expected if expected > 0 else 1.0

    def total(self) -> float:
        """The whole sweep's predicted wall time, before it starts."""
        return makespan(list(self.predicted.values()), self.slots)

    def start(self, trial_id: str, now: float) -> None:
        self.started.setdefault(trial_id, now)

    def progress(self, trial_id: str, fraction_done: float, now: float) -> None:
        """A running trial reported: it has run `fraction_done` of its steps by `now`."""
        began = self.started.get(trial_id)
        if began is not None and trial_id in self.predicted:
            self.reported[trial_id] = (min(max(fraction_done, 0.0), 1.0), now - began)
            self.first_report.setdefault(trial_id, self.reported[trial_id])

    def requeue(self, trial_id: str) -> None:
        """A trial crashed and waits for its retry: its run so far tells nothing."""
        self.started.pop(trial_id, None)
        self.reported.pop(trial_id, None)
        self.first_report.pop(trial_id, None)

    def finish(self, trial_id: str, now: float, fraction_done: float = 1.0) -> None:
        """A trial ended; `fraction_done` is the share of its steps it ran (less when it diverged)."""
        began = self.started.pop(trial_id, None)
        self.reported.pop(trial_id, None)
        self.first_report.pop(trial_id, None)
        self.finished.add(trial_id)
        if began is not None and trial_id in self.predicted:
            self.actual += now - began
            self.expected += self.predicted[trial_id] * min(max(fraction_done, 0.0), 1.0)

    def share_done(self) -> float:
        """The share of the sweep's predicted work done: finished trials whole, running ones as reported."""
        total = sum(self.predicted.values())
        done = sum(self.predicted[t] for t in self.finished if t in self.predicted)
        done += sum(self.predicted[t] * fraction for t, (fraction, _) in self.reported.items())
        return done / total if total > 0 else 0.0

    def rest(self, trial_id: str, began: float, now: float, k: float) -> float:
        """Seconds a running trial has left: its predicted rest (past its last report) rescaled, less the time
        since that report."""
        fraction, seconds = self.reported.get(trial_id, (0.0, 0.0))
        return max(0.0, k * self.predicted.get(trial_id, 0.0) * (1 - fraction) - (now - began - seconds))

    def left(self, now: float) -> float:
        """Seconds until the sweep ends: running trials' rest, then the queue, on the slots."""
        k = self.scale
        busy = [self.rest(t, s, now, k) for t, s in self.started.items()]
        queued = [k * d for t, d in self.predicted.items() if t not in self.finished and t not in self.started]
        return makespan(queued, max(self.slots, len(self.started)), busy)
