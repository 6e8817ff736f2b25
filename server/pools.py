"""A kind's actors as the dispatcher keeps them: one `ActorSlot` per actor (Ray Serve keeps a `RunningReplica`), and
the `Pool` that says which actor takes the next job. Bookkeeping only: the Ray handles are opaque here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from actors import JobKind
from server.fairqueue import FairQueue

PRESENT_S = 10.0  # a tenant that submitted a kind this recently is using it: the last free slot is kept for it
SEEN_KEPT = 1000  # tenants remembered per pool before the ones not seen within PRESENT_S are forgotten


@dataclass(eq=False)
class ActorSlot:
    """One actor: its handle, the jobs it runs, where it runs. A job that runs holds its slot, so a slot retired
    meanwhile still counts that job out when it ends."""

    name: str
    handle: Any
    inflight: int = 0
    node: str | None = None  # where it runs, once it has started (None while starting or being restarted)
    alive: bool = True  # False once retired, or gone for good
    restarting: bool = False  # a call failed on it: no jobs until it answers again

    @property
    def serving(self) -> bool:
        """Takes jobs: alive, and not being restarted by Ray."""
        return self.alive and not self.restarting

    @property
    def started(self) -> bool:
        return self.serving and self.node is not None


@dataclass(eq=False)
class Pool:
    """A kind's live actors; an autoscaled pool keeps between `least` and `most` of them."""

    kind: JobKind
    capacity: int  # jobs one actor runs at once
    least: int
    most: int
    slots: list[ActorSlot] = field(default_factory=list)
    pending: FairQueue = field(default_factory=FairQueue)  # served round-robin across tenants
    target: int = 0
    over_since: float | None = None  # when the pool first wanted more actors than it has
    under_since: float | None = None  # when it first wanted fewer
    created: int = 0  # actors ever made: each new one gets a fresh name
    run_ms: float | None = None  # recent time a job spends on an actor (a moving average), for `eta_ms`
    running_by: Counter[str] = field(default_factory=Counter)  # tenant -> its jobs running on the pool
    seen: dict[str, float] = field(default_factory=dict)  # tenant -> when it last submitted this kind
    flush: Any = None  # a batching pool's timer: when the jobs gathered while its actors were busy go out

    def next_name(self) -> str:
        self.created += 1
        return f"{self.kind.actor_name}-{self.created - 1}"

    @property
    def size(self) -> int:
        return len(self.slots)

    def serving(self) -> list[ActorSlot]:
        return [slot for slot in self.slots if slot.serving]

    def idle(self) -> list[ActorSlot]:
        return [slot for slot in self.slots if not slot.inflight]

    def free_slots(self) -> int:
        return sum(self.capacity - slot.inflight for slot in self.serving())

    def free_actor(self) -> ActorSlot | None:
        """The least-loaded serving actor with a free slot, if any (never one that Ray is restarting)."""
        best = min(self.serving(), key=lambda slot: slot.inflight, default=None)
        return best if best is not None and best.inflight < self.capacity else None

    def submitted_by(self, tenant: str, now: float) -> None:
        self.seen[tenant] = now
        if len(self.seen) > SEEN_KEPT:
            self.seen = {name: when for name, when in self.seen.items() if now - when < PRESENT_S}

    def headroom_for(self, now: float) -> str | None:
        """The tenant that may not take the pool's last free slot, if any: the one running the most jobs, while
        another tenant has used the kind within PRESENT_S. That slot is kept for the others, so a light tenant's
        job starts at once beside a heavy one instead of waiting for one of its jobs to end."""
        if not self.running_by or self.free_slots() != 1:
            return None
        heaviest = max(self.running_by, key=self.running_by.__getitem__)
        others = any(tenant != heaviest and now - when < PRESENT_S for tenant, when in self.seen.items())
        return heaviest if others else None

    def started(self, slot: ActorSlot, tenant: str) -> None:
        slot.inflight += 1
        self.running_by[tenant] += 1

    def ended(self, slot: ActorSlot, tenant: str, ms: float | None) -> None:
        slot.inflight -= 1
        self.running_by[tenant] -= 1
        if self.running_by[tenant] <= 0:
            del self.running_by[tenant]
        if ms is not None:
            self.run_ms = ms if self.run_ms is None else 0.8 * self.run_ms + 0.2 * ms

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "pending": len(self.pending),
            "target": self.target,
            "bounds": {"min": self.least, "max": self.most},
            "actors": [{"name": slot.name, "inflight": slot.inflight, "capacity": self.capacity, "node_id": slot.node,
                        "restarting": slot.restarting} for slot in self.slots],
        }


def placement_problem(kind: str, needs: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why no node of the cluster (each node's resources) can take an actor of `kind` needing `needs` (Ray's names:
    GPU, memory in bytes, custom ones), or None when one can: Ray would wait for such a node forever."""
    if not needs or any(all(node.get(name, 0) >= amount for name, amount in needs.items()) for node in nodes):
        return None
    asked = ", ".join(f"{amount / 2**20:,.0f} MiB of memory" if name == "memory" else f"{amount:g} {name}"
                      for name, amount in sorted(needs.items()))
    return (f"the {kind} kind asks each actor for {asked} and no node of this Ray cluster has that; add such a node, "
            f"or run no {kind} actors (AMI_POOLS={kind}=0)")
