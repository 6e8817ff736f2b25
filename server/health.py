"""Whether each actor still runs, and where: asked after a call failed on it (until Ray has restarted it, or given
up), and of every started actor every PROBE_EVERY s, so a death no job met shows in /pools and /readyz."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError

from server.pools import ActorSlot, Pool

log = logging.getLogger("server.dispatcher")

RECHECK_S = 0.5  # seconds between asking an actor that Ray is restarting whether it is back
PROBE_EVERY = 5.0  # seconds between asking every started actor where it runs, to notice deaths no job met

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class Health:
    """Asks actors where they run. `replace` starts another actor for one gone for good; `resume` sends a pool's
    waiting jobs once an actor is back; `closing` says the server is stopping (nothing is asked then)."""

    def __init__(self, spawn: Spawn, replace: Callable[[Pool, ActorSlot], None], resume: Callable[[Pool], None],
                 closing: Callable[[], bool]) -> None:
        self.spawn = spawn
        self.replace = replace
        self.resume = resume
        self.closing = closing
        self._probing: set[ActorSlot] = set()  # slots with a probe under way

    @staticmethod
    async def record_node(slot: ActorSlot) -> None:
        """Note where a new actor runs, once it has started (and warmed up)."""
        try:
            node = await slot.handle.node_id.remote()
        except Exception as exc:  # an actor that cannot start shows up in /pools and the log
            log.error("actor %s did not start: %s", slot.name, exc)
            return
        if slot.alive:
            slot.node = node

    def failed(self, pool: Pool, slot: ActorSlot) -> None:
        """A call failed on `slot` (its process or its node died): no jobs for it until it answers again."""
        if slot.serving:
            slot.restarting, slot.node = True, None
            self.spawn(self.recover(pool, slot))

    async def recover(self, pool: Pool, slot: ActorSlot) -> None:
        """Wait until Ray has restarted the actor and note where it runs now, or replace it if Ray will not restart
        it. Jobs go to the other actors meanwhile."""
        while not self.closing() and slot.alive:
            try:
                node = await slot.handle.node_id.remote()
            except ActorUnavailableError:
                await asyncio.sleep(RECHECK_S)  # being restarted; ask again
                continue
            except RayActorError as exc:  # dead for good: killed, or Ray gave up restarting it
                log.warning("actor %s is gone (%s); starting another", slot.name, type(exc).__name__)
                self.replace(pool, slot)
            else:
                slot.node, slot.restarting = node, False
                log.info("actor %s is back, on node %s", slot.name, node)
            self.resume(pool)
            return

    async def probe_forever(self, pools: Callable[[], Iterable[Pool]]) -> None:
        while not self.closing():
            await asyncio.sleep(PROBE_EVERY)
            for pool in pools():
                for slot in pool.slots:
                    if slot.started and slot not in self._probing:
                        self._probing.add(slot)
                        self.spawn(self._probe(pool, slot))

    async def _probe(self, pool: Pool, slot: ActorSlot) -> None:
        try:
            node = await slot.handle.node_id.remote()  # waits its turn behind the actor's jobs: never a timeout
        except RayActorError:
            if slot.serving:
                slot.restarting, slot.node = True, None
                await self.recover(pool, slot)
        else:
            if slot.serving:
                slot.node = node
        finally:
            self._probing.discard(slot)
