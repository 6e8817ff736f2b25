"""Everything one `make bench` run measured, handed from the measurements to the targets and the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.measure import Figure


@dataclass
class Results:
    quick: bool
    runs: int
    seconds: float
    shapes: list[str]
    stores: dict[str, dict[str, Figure]]
    raw: dict[str, Figure]
    served: dict[str, Figure]
    polls: dict[str, list[float]]
    conns: dict[int, tuple[int, float, bool]]
    slow: dict[str, float]
    audio: dict[str, Any]
    cold: list[float]
