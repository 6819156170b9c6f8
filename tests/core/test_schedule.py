import itertools
import math

import pytest

from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.schedule import (
    STEPS_BETWEEN_LOOKS,
    ScheduleClock,
    learning_rate,
)


def run_clock(clock, seconds_per_step, steps, start=100.0):
    """Progress at each step of a run whose steps take ``seconds_per_step(step)`` seconds."""
    now, trace = start, []
    for step in range(steps):
        trace.append(clock.progress(step, now))
        now += seconds_per_step(step)
    return trace


def test_without_a_budget_progress_counts_steps():
    clock = ScheduleClock(400, None)
    assert run_clock(clock, lambda s: 1.0, 400) == [s / 400 for s in range(400)]


@pytest.mark.parametrize("jitter", [0.0, 0.3])
def test_a_budget_that_does_not_bind_leaves_the_schedule_to_the_steps(jitter):
    # a slow first step and uneven steps (a busy machine) must not move the schedule
    def pace(step):
        return (5.0 if step == 0 else 0.1) * (1 + jitter * math.sin(step))

    clock = ScheduleClock(1000, 100.0 + 0.16 * 1000 + 10)
    assert run_clock(clock, pace, 1000) == [s / 1000 for s in range(1000)]
    assert not clock.budget_binds


def test_a_binding_budget_anneals_by_the_deadline_without_jumps():
    total, budget = 2000, 60.0  # 0.1 s per step: 200 s of epochs for 60 s of budget
    clock = ScheduleClock(total, 100.0 + budget)
    trace = run_clock(clock, lambda s: 0.1, 600)
    assert clock.budget_binds
    assert trace[-1] == pytest.approx(1.0, abs=0.01)  # annealed when the deadline stops it
    steps = [b - a for a, b in itertools.pairwise(trace)]
    assert min(steps) >= 0.0
    assert max(steps) < 3.0 / 600  # re-planning spreads the rest, it does not jump


def test_the_plan_relaxes_when_the_pace_picks_up():
    total = 1000
    clock = ScheduleClock(total, 100.0 + 150.0)
    # slow for the first look (binds), then fast enough to finish every step in time
    trace = run_clock(clock, lambda s: 0.5 if s < STEPS_BETWEEN_LOOKS else 0.05, total)
    assert trace[STEPS_BETWEEN_LOOKS + 1] > (STEPS_BETWEEN_LOOKS + 1) / total
    assert trace[-1] == pytest.approx((total - 1) / total, abs=1e-3)


def test_learning_rate_decays_from_lr_to_its_floor():
    config = TrainConfig(lr=1e-3, lr_min_fraction=0.1)
    assert learning_rate(config, 0.0) == pytest.approx(1e-3)
    assert learning_rate(config, 0.5) == pytest.approx(0.55e-3)
    assert learning_rate(config, 1.0) == pytest.approx(1e-4)
    assert learning_rate(config, 3.0) == pytest.approx(1e-4)
