"""The autoscaler's decision, a pure function of a pool's figures (unit-tested without Ray); the dispatcher applies
it every SCALE_EVERY seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figures:
    unfinished: int  # the pool's jobs, queued or running
    size: int  # its live actors
    idle: int  # of them, those running no job
    least: int
    most: int
    per_actor: int  # unfinished jobs one actor should hold (AMI_POOL_TARGET_PER_ACTOR, else its capacity)
    now: float
    over_since: float | None  # when the pool first wanted more actors than it has, if it still does
    under_since: float | None  # when it first wanted fewer
    upscale_delay: float
    downscale_delay: float


@dataclass(frozen=True)
class Decision:
    target: int  # actors the pool wants now, within its bounds
    grow: int = 0  # actors to start now
    shrink: bool = False  # retire one idle actor now
    over_since: float | None = None  # the figures to keep for the next look
    under_since: float | None = None


def decide(figures: Figures) -> Decision:
    """Grow a pool whose unfinished jobs per actor exceed the target for the upscale delay (to the target at once);
    shrink it by one idle actor per downscale delay while it has too little work; never beyond its bounds, never an
    actor that runs a job."""
    f = figures
    target = min(max(-(-f.unfinished // f.per_actor), f.least), f.most)
    if target > f.size:
        over = f.now if f.over_since is None else f.over_since
        if f.now - over >= f.upscale_delay:
            return Decision(target, grow=target - f.size)
        return Decision(target, over_since=over)
    if target < f.size:
        under = f.now if f.under_since is None else f.under_since
        if f.idle and f.now - under >= f.downscale_delay:
            return Decision(target, shrink=True, under_since=f.now)  # the next one waits its turn
        return Decision(target, under_since=under)
    return Decision(target)
