"""Token buckets, kept as two numbers by whoever holds one (a connection's frame budget, a tenant's submission
quota): how full it is now, and how long until it holds one token."""

from __future__ import annotations

import math


def refilled(tokens: float, since: float, now: float, rate: float, burst: float) -> float:
    """The tokens of a bucket that held `tokens` at `since`, refilled at `rate` a second, never beyond `burst`."""
    return min(burst, tokens + (now - since) * rate)


def wait_ms(tokens: float, rate: float) -> int:
    """Milliseconds until a bucket holding `tokens` (fewer than one) holds one: what `retry_after_ms` says."""
    return max(1, math.ceil((1.0 - tokens) / rate * 1000))
