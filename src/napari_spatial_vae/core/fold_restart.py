"""Start training again, at most twice, when z is folded early in the run.

A folded z (two states of the motion read as one value, :mod:`.unrendered`) shows early:
on ``out-of-plane`` s7 (2026-12-07) the particles' unrendered variation stood at 1.0-2.0
times what z renders from the fourth epoch to the last, and the run ended folded
(|Pearson(z, motion)| 0.50), while the runs that learned the motion it was set on fell
below 0.4 by a third of the schedule (0.22-0.56 on the runs since; docs/defaults.md,
"Starting again when z folds" and "A second restart"). The likelihood barely
tells a folded z from a straight one, so training does not leave the fold by itself; a
fresh initialisation usually does not fold. So when the learning-rate schedule passes
:data:`FOLD_CHECK_PROGRESS`, training measures the share on the training particles and,
above :data:`FOLD_RESTART_SHARE`, starts again from a fresh initialisation, in the time
budget that is left; each new attempt is checked the same way, up to
:data:`MAX_FOLD_RESTARTS` restarts.

Only a one-dimensional z is checked (:func:`checks_for_folds`): a fold is a line laid over
itself, and with more latent dimensions the unrendered share says something else, that the
particles vary in more ways than z renders, which a fresh start does not change (the Hubble
galaxies with z-dim 2 and the Gaussian likelihood measured above the threshold and started
again to no purpose, docs/defaults.md). With z-dim 1 the same can happen, and the check
tells it from a fold (:func:`more_than_a_fold`): a fold leaves one variation unrendered,
about as strong as what z renders; particles with more kinds of variation than z has room
for leave several, together far stronger. The run then says so and goes on.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_spatial_vae.core.config import SEED_COUNT
from napari_spatial_vae.core.unrendered import (
    UnrenderedVariation,
    describe_many_variations,
    describe_share,
)

# where in the schedule the run looks for a fold: the end of the default coarse phase, when
# runs that learned the motion render it (their encoder's |Pearson| 0.68 or more there)
FOLD_CHECK_PROGRESS = 0.3
# the share above which the run starts again: 0.70-1.29 on the six attempts that had folded
# at the check (out-of-plane s7, s20 twice, s23-s25; their encoder's |Pearson| with the motion
# 0.52 at most there), 0.22-0.56 on the working ones measured since (0.68-0.84), 0.27 at most
# on the runs it was set on (docs/defaults.md): nearer the working side, as a false restart
# costs a third of the schedule and a missed fold the run; stricter than the final warning's
# 0.25 because a model a third of the way through renders z less sharply
FOLD_RESTART_SHARE = 0.6
# how many times a run may start again: out-of-plane s20's second attempt folded too (0.73 at
# the end) and the third initialisation, trained on its own, did not (0.943); a third
# attempt of a time-limited run still gets about half the budget or more (each check falls
# at most about a third of the way through what is left)
MAX_FOLD_RESTARTS = 2
# not a fold: a fold leaves one variation unrendered, the other branch of the motion, about
# as strong as what z renders (out-of-plane: 0.70-1.29 at the checks, the second strongest
# direction 0.13-0.68 of the first); the Hubble galaxies with z-dim 1 left 2.9 (Gaussian)
# and 4.6 (Bernoulli) times what z rendered, the second direction 1.7 and 0.8 of the first,
# and the Gaussian run started again twice to no purpose (docs/defaults.md, "Not a fold:
# particles that vary in more ways than z renders"). Both conditions (the second direction's
# is UnrenderedVariation.several_directions), so a fold's strong runner-up alone (0.68)
# never stops a restart
MANY_VARIATIONS_SHARE = 2.0


def checks_for_folds(z_dim: int) -> bool:
    """Whether a run with ``z_dim`` latent dimensions looks for a fold: z-dim 1 only."""
    return z_dim == 1


def may_restart(restarts: int) -> bool:
    """Whether a run that has started again ``restarts`` times may start again."""
    return restarts < MAX_FOLD_RESTARTS


def fold_check_share(history: list[dict]) -> float | None:
    """The share the fold check measured, from a run's ``history.csv`` rows (train.py keeps
    it as ``unrendered`` on the train row of its epoch); None where it did not run (z-dim
    other than 1, too short a run, an attempt after the last restart allowed). After a
    restart the rows are the last attempt's."""
    return next((row["unrendered"] for row in history if row.get("unrendered") is not None), None)


def fold_check_due(progress_before: float, progress_after: float) -> bool:
    """Whether an epoch that took the schedule from ``progress_before`` to
    ``progress_after`` (0..1) crossed the point where the run looks for a fold."""
    return progress_before < FOLD_CHECK_PROGRESS <= progress_after


def restart_seed(seed: int, attempt: int) -> int:
    """The initialisation seed of attempt ``attempt`` (0: the first, which uses ``seed``).

    Derived from both numbers so that a restarted ``--seed 7`` is not ``--seed 8``'s model,
    and reduced into the seed setting's range like every seed here (the raw 64-bit state is
    above it for about four seeds in ten; torch accepted it, but it was no valid ``--seed``).
    """
    if attempt == 0:
        return seed
    state = int(np.random.SeedSequence([seed, attempt]).generate_state(1, np.uint64)[0])
    return state % SEED_COUNT


def folded(variation: UnrenderedVariation | None) -> bool:
    """Whether a mid-run measure says z is folded (None: nothing measured).

    Above :data:`FOLD_RESTART_SHARE`, unless the particles plainly vary in more ways than z
    renders (:func:`more_than_a_fold`), which a fresh start would not change.
    """
    return (
        variation is not None
        and variation.share > FOLD_RESTART_SHARE
        and not more_than_a_fold(variation)
    )


def more_than_a_fold(variation: UnrenderedVariation) -> bool:
    """Whether what z leaves unrendered is more than a fold leaves: both far stronger than
    what z renders (:data:`MANY_VARIATIONS_SHARE`) and spread over several directions (the
    second at least :data:`~.unrendered.SEVERAL_DIRECTIONS_RATIO` of the first)."""
    return variation.share >= MANY_VARIATIONS_SHARE and variation.several_directions


def restart_message(variation: UnrenderedVariation, epoch: int, restarts: int) -> str:
    """The one line a run prints when it starts again for the ``restarts``-th time (1, 2)."""
    return (
        f"z looks folded after epoch {epoch} (the particles share a variation the model does "
        f"not render, {describe_share(variation.share)} as strong as what z renders): "
        "starting again from "
        f"a fresh initialisation in the time left, attempt {restarts + 1} of at most "
        f"{MAX_FOLD_RESTARTS + 1} (--no-fold-restart keeps the first)"
    )


def fold_check_line(variation: UnrenderedVariation | None, epoch: int, attempt: int) -> str:
    """What a run says after the check of ``epoch``: that it starts again (for the
    ``attempt``-th time: 1, 2), that the particles vary in more ways than z renders, or
    nothing when the check passed."""
    if variation is None:
        return ""
    if folded(variation):
        return restart_message(variation, epoch, attempt)
    if variation.share > FOLD_RESTART_SHARE:
        return many_variations_message(variation, epoch)
    return ""


def many_variations_message(variation: UnrenderedVariation, epoch: int) -> str:
    """The one line a run prints when the check finds more than a fold (no restart)."""
    return (
        f"after epoch {epoch} {describe_many_variations(variation)}; not a folded z, so "
        "training goes on without starting again; a larger --z-dim renders more"
    )


def reinitialise(
    model: torch.nn.Module, fresh: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Give ``model`` the weights of ``fresh`` in place and forget the optimiser's moments.

    In place, so that wrappers of the model (the loss module, DistributedDataParallel, a
    compiled generator) and the optimiser's parameter groups stay valid; every rank builds
    the same ``fresh`` model from the same seed, so replicas stay identical.
    """
    with torch.no_grad():
        for weight, new_weight in zip(model.parameters(), fresh.parameters(), strict=True):
            weight.copy_(new_weight)
        for buffer, new_buffer in zip(model.buffers(), fresh.buffers(), strict=True):
            buffer.copy_(new_buffer)
    optimizer.state.clear()
