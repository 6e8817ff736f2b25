"""A kind's queue, served fairly across tenants: one lane per tenant, and the next job always comes from the tenant
served least recently (round-robin, where a tenant that had nothing queued goes first). Within a lane, jobs go by
priority (9 first), then in the order they came.

So a tenant with 10,000 jobs queued makes another tenant's job wait for at most one of its jobs per actor slot,
where a single first-in-first-out queue would make it wait for all of them. Every job costs the same here (one
turn); Hatchet's per-tenant round-robin and deficit round-robin with a quantum of one job are the same idea.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable

from server.jobs import Job

FRONT = -10  # the priority key of a job put back at the front of its lane (its actor died under it)
MAX_REMEMBERED = 10_000  # tenants whose last turn is remembered; past this, idle ones are forgotten (they go first)


class FairQueue:
    def __init__(self) -> None:
        self._lanes: dict[str, list[tuple[int, int, Job]]] = {}  # tenant -> heap of (-priority, arrival, job)
        self._turns: list[tuple[int, int, str]] = []  # heap of (last served, arrival, tenant), tenants with jobs
        self._turn: dict[str, tuple[int, int]] = {}  # tenant -> its entry in `_turns` (the order of turns)
        self._last: dict[str, int] = {}  # tenant -> the turn it was last served in
        self._served = 0
        self._arrivals = itertools.count()
        self._entries: dict[str, tuple[int, int]] = {}  # job id -> its (priority key, arrival): every job queued
        self._keys: dict[str, Counter[int]] = {}  # tenant -> jobs queued by priority key, for `position`
        self._latest: dict[str, dict[int, int]] = {}  # tenant -> priority key -> the last arrival pushed

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, job: Job, front: bool = False) -> None:
        lane = self._lanes.setdefault(job.tenant, [])
        entry = (FRONT if front else -job.priority, next(self._arrivals))
        heapq.heappush(lane, (*entry, job))
        self._entries[job.id] = entry
        self._keys.setdefault(job.tenant, Counter())[entry[0]] += 1
        self._latest.setdefault(job.tenant, {})[entry[0]] = entry[1]
        self._take_turn(job.tenant)

    def _left(self, job: Job, key: int) -> None:
        del self._entries[job.id]
        keys = self._keys[job.tenant]
        keys[key] -= 1
        if not keys[key]:
            del keys[key]

    def _take_turn(self, tenant: str) -> None:
        if tenant not in self._turn:
            turn = self._turn[tenant] = (self._last.get(tenant, -1), next(self._arrivals))
            heapq.heappush(self._turns, (*turn, tenant))

    def pop(self, allowed: Callable[[str], bool] | None = None) -> Job | None:
        """The next job to run: the best of the lane of the tenant served least recently (of those `allowed`)."""
        skipped: list[tuple[int, int, str]] = []
        try:
            return self._pop(allowed, skipped)
        finally:
            for entry in skipped:  # their turn is kept, in its place
                heapq.heappush(self._turns, entry)

    def _pop(self, allowed: Callable[[str], bool] | None, skipped: list[tuple[int, int, str]]) -> Job | None:
        while self._turns:
            entry = heapq.heappop(self._turns)
            tenant = entry[2]
            lane = self._lanes.get(tenant)
            if lane and allowed is not None and not allowed(tenant):
                skipped.append(entry)
                continue
            self._turn.pop(tenant, None)
            if not lane:  # its jobs were all removed (cancelled) since it took this turn
                continue
            key, _, job = heapq.heappop(lane)
            self._left(job, key)
            self._served += 1
            self._last[tenant] = self._served
            if lane:
                self._take_turn(tenant)
            else:
                del self._lanes[tenant], self._keys[tenant], self._latest[tenant]
                self._forget_idle()
            return job
        return None

    def _forget_idle(self) -> None:
        if len(self._last) > MAX_REMEMBERED:
            self._last = {name: turn for name, turn in self._last.items() if name in self._lanes}

    def remove(self, job: Job) -> bool:
        """Take a queued job out (cancelled); False if it is not queued here."""
        lane = self._lanes.get(job.tenant)
        if not lane or job.id not in self._entries:
            return False
        for index, (key, _, queued) in enumerate(lane):
            if queued is job:
                lane[index] = lane[-1]
                lane.pop()
                heapq.heapify(lane)
                self._left(job, key)
                if not lane:  # its turn stays in the heap; `pop` skips a tenant with no lane
                    del self._lanes[job.tenant], self._keys[job.tenant], self._latest[job.tenant]
                return True
        return False

    def queued(self, tenant: str) -> int:
        return len(self._lanes.get(tenant, ()))

    def tenants(self) -> int:
        """Tenants with jobs queued."""
        return len(self._lanes)

    def by_tenant(self) -> dict[str, int]:
        return {tenant: len(lane) for tenant, lane in self._lanes.items()}  # a lane is never kept empty

    def position(self, job: Job) -> int | None:
        """Jobs that will be served before `job` (0: it is next), or None if it is not queued.

        Its rank r in its own lane, plus, of every other tenant's lane, the r jobs it serves in the r rounds
        before (or r + 1 if that tenant's turn comes first), never more than the lane holds.
        """
        entry = self._entries.get(job.id)
        if entry is None:
            return None
        key, arrival = entry
        keys = self._keys[job.tenant]
        rank = sum(count for other, count in keys.items() if other < key)
        if arrival == self._latest[job.tenant][key]:  # the usual case, a job just accepted: no scan of its lane
            rank += keys[key] - 1
        else:
            rank += sum(1 for other, when, _ in self._lanes[job.tenant] if other == key and when < arrival)
        mine = self._turn[job.tenant]
        ahead = rank
        for tenant, other in self._lanes.items():
            if tenant != job.tenant and other:
                ahead += min(len(other), rank + (self._turn[tenant] < mine))
        return ahead
