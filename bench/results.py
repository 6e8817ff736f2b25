"""Everything one `make bench` run measured, handed from the measurements to the targets and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.measure import Figure, Held


@dataclass
class Results:
    quick: bool
    runs: int
    seconds: float
    shapes: list[str]
    stores: dict[str, dict[str, Figure]]
    raw: dict[str, Figure]  # by load shape, and by window ("window 2048") for one driver
    served: dict[str, Figure]
    polls: dict[str, list[float]]
    conns: dict[str, Held]
    slow: dict[str, float]
    audio: dict[str, Any]
    cold: list[float]
    flood: dict[str, Any] = field(default_factory=dict)  # another client alone and during a flood; the flooder
    slowloris: dict[str, Any] = field(default_factory=dict)  # by where the sockets come from
    fairness: dict[str, Any] = field(default_factory=dict)  # a light tenant's jobs beside a heavy one
    speech: dict[str, Any] = field(default_factory=dict)  # audio.speech: one core, 10 and 60 minutes; the product

    @property
    def best_raw(self) -> Figure:
        """Raw Ray's best jobs/s over the shapes and windows: what the product is held against."""
        return max(self.raw.values(), key=lambda figure: figure.rate)
