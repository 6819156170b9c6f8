"""The learning-rate schedule: a cosine over optimiser steps that a time budget compresses.

The schedule's *progress* goes 0 -> 1 over a run; the learning rate, the coarse-to-fine switch
and nothing else follow it. It counts optimiser steps, so a run whose epochs finish inside its
time budget is a function of its settings and seed alone: the same command gives the same
model, whether the machine is busy or idle. Only when the budget *binds* (the measured pace
says the remaining epochs will not fit) does the clock compress what is left of the schedule
into the time that is left, so a run stopped by ``--max-minutes`` still ends annealed.

Earlier versions took progress as ``max(steps / total, seconds / budget)`` at every step; the
seconds entered in the first steps of every budgeted run (setup time is a larger fraction of
the budget than one step is of the run), so two runs of one command differed from the first
epoch on and, the optimisation being chaotic, ended apart (Fisher-Lee 0.39 against 0.93 on
one design and seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.model import why_not_binned

#: optimiser steps between looks at the pace (fixed counts, so epoch-bound runs look at the
#: same steps); fewer would judge the pace on the first steps' one-off costs
STEPS_BETWEEN_LOOKS = 64
#: ... but a slow run (big boxes on a CPU) looks at least this often, as a fraction of the budget
BUDGET_FRACTION_BETWEEN_LOOKS = 0.05


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Cosine decay from ``lr`` to ``lr * lr_min_fraction`` as ``progress`` goes 0 -> 1."""
    floor = config.lr * config.lr_min_fraction
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class ScheduleClock:
    """Progress of the schedule at each optimiser step.

    Parameters
    ----------
    total_steps : int
        Optimiser steps of all epochs (the run's end when the budget does not bind).
    deadline : float or None
        ``time.monotonic()`` value at which the budget ends; None for no budget.

    Notes
    -----
    Until the budget binds, ``progress(step)`` is exactly ``step / total_steps``. At a look
    (every :data:`STEPS_BETWEEN_LOOKS` steps, or sooner when a look is a large share of the
    budget) the pace so far projects when the epochs would end; if after the deadline, the
    rest of the schedule, from the progress reached, is spread over the steps that fit. A
    later look re-plans the same way (towards ``total_steps`` again if the pace picked up),
    so progress stays continuous.
    """

    def __init__(self, total_steps: int, deadline: float | None):
        self.total_steps = max(total_steps, 1)
        self.deadline = deadline
        self._start_time: float | None = None  # time of the first call
        self._pace_from: tuple[int, float] | None = None  # (step, time) of the second call
        self._last_look: tuple[int, float] | None = None
        # once the budget has bound: progress `anchor_progress` at `anchor_step`, 1 at `end_step`
        self._anchor: tuple[int, float, int] | None = None

    @property
    def budget_binds(self) -> bool:
        """Whether the schedule is compressed into the time budget."""
        return self._anchor is not None

    def progress(self, step: int, now: float) -> float:
        """Progress (0..1) for the optimiser step ``step`` (count before it) at time ``now``."""
        if self.deadline is not None:
            self._look(step, now)
        return self._planned_progress(step)

    def _look(self, step: int, now: float) -> None:
        assert self.deadline is not None
        if self._start_time is None:
            self._start_time = now
            return
        if self._pace_from is None:
            # the pace is measured from the end of the first step: that one carries one-off
            # costs (allocation, kernel choice) that would make every budget look too short
            self._pace_from = self._last_look = (step, now)
            return
        assert self._last_look is not None
        from_step, from_time = self._pace_from
        budget = self.deadline - self._start_time
        due_by_steps = (step - from_step) % STEPS_BETWEEN_LOOKS == 0
        due_by_time = now - self._last_look[1] >= BUDGET_FRACTION_BETWEEN_LOOKS * budget
        if step == self._last_look[0] or not (due_by_steps or due_by_time):
            return
        self._last_look = (step, now)
        seconds_per_step = (now - from_time) / (step - from_step)
        steps_left = self.total_steps - step
        fits = now + steps_left * seconds_per_step <= self.deadline
        if fits and self._anchor is None:
            return  # the common case: nothing changes, the run stays a function of its seed
        reached = self._planned_progress(step)
        steps_that_fit = (
            steps_left if fits else max(int((self.deadline - now) / seconds_per_step), 1)
        )
        self._anchor = (step, reached, step + steps_that_fit)

    def _planned_progress(self, step: int) -> float:
        if self._anchor is None:
            return min(step / self.total_steps, 1.0)
        anchor_step, anchor_progress, end_step = self._anchor
        share = (step - anchor_step) / max(end_step - anchor_step, 1)
        return min(anchor_progress + (1.0 - anchor_progress) * share, 1.0)


@dataclass(frozen=True)
class CoarseToFine:
    """How a run uses coarse-to-fine training (:attr:`TrainConfig.coarse_fraction`).

    Attributes
    ----------
    binning
        Bin size of the coarse phase (1: none).
    fraction
        Share of the run's progress trained binned.
    why_not
        Why a requested coarse phase is skipped ("" when it runs or was not asked for).
    """

    binning: int
    fraction: float
    why_not: str = ""

    def describe(self) -> str:
        """One phrase for the run's log."""
        if self.binning > 1:
            return (
                f"coarse-to-fine: {self.binning}x{self.binning}-binned particles for the first "
                f"{self.fraction:.0%} of the run"
            )
        return "coarse-to-fine: off" + (f" ({self.why_not})" if self.why_not else "")


def plan_coarse_to_fine(config: TrainConfig, image_shape: tuple[int, int, int]) -> CoarseToFine:
    """The coarse phase a run can use: 2x2 binning, or none where binning does not apply.

    A CTF is applied to the binned rendering through its low frequencies
    (``SpatialVAE.apply_ctf``); where binning does not apply: :func:`~.model.why_not_binned`.
    """
    if config.coarse_fraction <= 0:
        return CoarseToFine(1, 0.0)
    why_not = why_not_binned(config.model, image_shape)
    if why_not:
        return CoarseToFine(1, 0.0, why_not)
    return CoarseToFine(2, config.coarse_fraction)
