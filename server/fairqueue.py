"""A kind's queue, served fairly across tenants: one lane per tenant, and the next job always comes from the tenant
served least recently (round-robin, where a tenant that had nothing queued goes first). Within a lane, jobs go by
priority (9 first), then in the order they came.

So a tenant with 10,000 jobs queued makes another tenant's job wait for at most one of its jobs per actor slot,
where a single first-in-first-out queue would make it wait for all of them. Every job costs the same here (one
turn); Hatchet's per-tenant round-robin and deficit round-robin with a quantum of one job are the same idea.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
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
        self._entries: dict[str, tuple[int, int]] = {}  # job id -> (priority key, place in its bucket), queued jobs
        self._buckets: dict[str, dict[int, _Bucket]] = {}  # tenant -> priority key -> its jobs queued, for `position`

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, job: Job, front: bool = False) -> None:
        lane = self._lanes.setdefault(job.tenant, [])
        key = FRONT if front else -job.priority
        heapq.heappush(lane, (key, next(self._arrivals), job))
        bucket = self._buckets.setdefault(job.tenant, {}).get(key)
        if bucket is None:
            bucket = self._buckets[job.tenant][key] = _Bucket()
        self._entries[job.id] = (key, bucket.add())
        self._take_turn(job.tenant)

    def _left(self, job: Job, key: int, popped: bool) -> None:
        _, place = self._entries.pop(job.id)
        buckets = self._buckets[job.tenant]
        if not buckets[key].leave(place, popped):
            del buckets[key]

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
            self._left(job, key, popped=True)
            self._served += 1
            self._last[tenant] = self._served
            if lane:
                self._take_turn(tenant)
            else:
                del self._lanes[tenant], self._buckets[tenant]
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
                self._left(job, key, popped=False)
                if not lane:  # its turn stays in the heap; `pop` skips a tenant with no lane
                    del self._lanes[job.tenant], self._buckets[job.tenant]
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
        before (or r + 1 if that tenant's turn comes first), never more than the lane holds. No scan of a lane:
        a `status` of a job deep in a long queue costs what one just accepted does.
        """
        entry = self._entries.get(job.id)
        if entry is None:
            return None
        key, place = entry
        buckets = self._buckets[job.tenant]
        rank = buckets[key].rank(place) + sum(bucket.count for other, bucket in buckets.items() if other < key)
        mine = self._turn[job.tenant]
        ahead = rank
        for tenant, other in self._lanes.items():
            if tenant != job.tenant and other:
                ahead += min(len(other), rank + (self._turn[tenant] < mine))
        return ahead


class _Bucket:
    """A tenant's queued jobs of one priority key. They leave in the order they came (or earlier, cancelled), so a
    job's rank among them is its place less those that left before it: counted, never scanned."""

    __slots__ = ("added", "count", "removed", "taken")

    def __init__(self) -> None:
        self.added = 0  # places handed out
        self.count = 0  # jobs queued now
        self.taken = 0  # jobs that left from the front (started), and cancelled ones before them
        self.removed: list[int] = []  # places of cancelled jobs behind the front, sorted

    def add(self) -> int:
        self.added += 1
        self.count += 1
        return self.added - 1

    def leave(self, place: int, popped: bool) -> int:
        """`place` left (started from the front, or cancelled); the jobs still queued here."""
        self.count -= 1
        if popped:  # the front: every place before it has left, cancelled ones included
            before = bisect.bisect_left(self.removed, place)
            self.taken += 1 + before
            del self.removed[:before]
        else:
            bisect.insort(self.removed, place)
        return self.count

    def rank(self, place: int) -> int:
        return place - self.taken - bisect.bisect_left(self.removed, place)
