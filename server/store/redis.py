"""The `redis://` backend: several servers share one Redis; jobs are JSON strings written in pipelined batches, each
server holds a lease and adopts a dead one's jobs, fencing tokens keep a paused server from writing jobs it lost,
and pub/sub tells each server what the others finished or were asked to cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.jobs import Job
from server.store.interface import (
    MAX_BATCH,
    JobEvent,
    Saved,
    Store,
    cache_key,
    from_record,
    resolve_all,
    to_record,
)

log = logging.getLogger("server.store")


def _nobody(job_id: str) -> None:
    return None


def _write_nothing(pipe: Any) -> None:
    pass


@dataclass(slots=True)
class _Write:
    """A queued write: what it adds to the pipeline, who waits for its answer, and the job whose fenced write it
    queues last (its answer says whether the fence let it through)."""

    write: Callable[[Any], None]
    saved: Saved | None
    fenced: str | None
    owns: str | None = None  # the job whose first save this is
    also: Saved | None = None  # a first save it superseded, answered with it


class RedisStore:
    """Jobs as JSON strings in Redis, written in pipelined batches; finishes announced by pub/sub."""

    FINISHED = "ami:finished"
    CANCEL = "ami:cancel"

    # A job's result and running state are written only by the holder of its current fencing token: a server
    # that lost the job (paused past its lease, then adopted by another) writes nothing for it when it wakes.
    FENCED_SET = """
        if tonumber(redis.call('GET', KEYS[3]) or '0') ~= tonumber(ARGV[3]) then return 0 end
        if ARGV[6] == 'finish' then
            redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
            redis.call('SREM', KEYS[2], ARGV[4])
            redis.call('PUBLISH', ARGV[5], ARGV[4])
        else
            redis.call('SET', KEYS[1], ARGV[1], 'XX')
        end
        return 1
    """

    def __init__(self, url: str, ttl: float, lease_ttl: float = 15.0) -> None:
        self.url = url
        self.failure: str | None = None  # why the last write failed, until one succeeds again
        self.on_lost: JobEvent = _nobody  # told of a job another server owns now (see `listen`)
        self._tasks: set[asyncio.Task[None]] = set()  # cancel requests being published
        self.ttl = int(ttl)
        self.lease_ttl = lease_ttl
        self._held: set[str] = set()  # owners whose lease this store renews
        self._owned: dict[str, str] = {}  # job id -> owner: saved as this server's, not finished by it yet
        self.fenced = 0  # writes refused because another server owns the job now
        self._pending: list[_Write] = []
        self._starts: dict[str, _Write] = {}  # job id -> its `running` write, while that waits to go out
        self._puts: dict[str, _Write] = {}  # job id -> its first save, while that waits to go out
        self._flushing: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    async def open(self) -> None:
        import redis.asyncio as redis

        self.loop = asyncio.get_running_loop()
        self.client = redis.Redis.from_url(self.url)
        await self.client.ping()

    async def close(self) -> None:
        # A server that stops in order lets the others adopt its unfinished jobs at once; a dead one's lease
        # runs out after AMI_LEASE_TTL.
        for owner in list(self._held):
            with contextlib.suppress(Exception):
                await self.client.delete(self._lease(owner))
        if self._listener is not None:
            self._listener.cancel()
        await asyncio.gather(*(task for task in (self._listener, *self._tasks) if task is not None),
                             return_exceptions=True)
        while self._flushing is not None or self._pending:
            if self._flushing is None:
                self._flushing = self.loop.create_task(self._flush())
            await self._flushing
        await self.client.aclose()

    def health(self) -> str | None:
        return self.failure

    def unavailable(self) -> str | None:
        return None  # a Redis that is down fails the writes themselves: `health` says so

    @staticmethod
    def _key(job_id: str) -> str:
        return f"ami:job:{job_id}"

    @staticmethod
    def _fence(job_id: str) -> str:
        return f"ami:fence:{job_id}"

    def put(self, job: Job) -> Saved:
        def write(pipe: Any) -> None:  # the record as it is when it goes out (a job runs while it is being saved)
            pipe.set(self._key(job.id), json.dumps(to_record(job)))
            pipe.sadd(f"ami:unfinished:{job.owner}", job.id)

        saved = self._enqueue(write, owns=job)
        self._puts[job.id] = self._pending[-1]
        return saved

    def _fenced(self, job: Job, what: str, pipe: Any) -> None:
        record = json.dumps(to_record(job))
        keys = [self._key(job.id), f"ami:unfinished:{job.owner}", self._fence(job.id)]
        # EVAL, not EVALSHA: a Redis restarted meanwhile has forgotten loaded scripts, and the text is small.
        pipe.eval(self.FENCED_SET, len(keys), *keys, record, self.ttl, job.fence, job.id, self.FINISHED, what)

    def finish(self, job: Job) -> Saved:
        self._owned.pop(job.id, None)
        # Its first save or its `running` write may not have gone out yet (under load a job often ends before):
        # the result, written after them, supersedes both; whoever waits for the first save is answered with it.
        started = self._starts.pop(job.id, None)
        if started is not None:
            started.write, started.fenced = _write_nothing, None
        first = self._puts.pop(job.id, None)
        also = None
        if first is not None:
            first.write, also, first.saved = _write_nothing, first.saved, None
        saved = self._enqueue(lambda pipe: self._fenced(job, "finish", pipe), fenced=job.id)
        self._pending[-1].also = also
        return saved

    def start(self, job: Job) -> None:  # never resurrects a purged or finished record (SET XX)
        self._enqueue(lambda pipe: self._fenced(job, "start", pipe), wanted=False, fenced=job.id)
        self._starts[job.id] = self._pending[-1]

    def remember(self, kind: str, args: dict[str, Any], result: Any) -> None:
        key, value = f"ami:result:{kind}:{cache_key(args)}", json.dumps(result)

        def write(pipe: Any) -> None:
            pipe.set(key, value)

        self._enqueue(write, wanted=False)

    async def cached(self, kind: str, args: dict[str, Any]) -> Any:
        raw = await self.client.get(f"ami:result:{kind}:{cache_key(args)}")
        return json.loads(raw) if raw else None

    def _enqueue(self, write: Callable[[Any], None], wanted: bool = True, fenced: str | None = None,
                 owns: Job | None = None) -> Saved:
        saved = self.loop.create_future()
        self._pending.append(_Write(write, saved if wanted else None, fenced, None if owns is None else owns.id))
        if owns is not None:
            owner = owns.owner
            # Owned once saved, unless it finished meanwhile (a job's run overlaps its first save): a finished job
            # left here would look adopted by another server at the next lease renewal, and be dropped.
            saved.add_done_callback(lambda done: self._owned.__setitem__(owns.id, owner)
                                    if done.result() and not owns.finished else None)
        if self._flushing is None:
            self._flushing = self.loop.create_task(self._flush())
        return saved

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                for entry in batch:  # going out now: a result written later follows them
                    if entry.owns is not None and self._puts.get(entry.owns) is entry:
                        del self._puts[entry.owns]
                    if entry.fenced is not None and self._starts.get(entry.fenced) is entry:
                        del self._starts[entry.fenced]
                ok = True
                lost: list[str] = []
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        ends = []
                        for entry in batch:
                            entry.write(pipe)
                            ends.append(len(pipe.command_stack))
                        answers = await pipe.execute()
                    lost = [entry.fenced for entry, end in zip(batch, ends, strict=True)
                            if entry.fenced is not None and answers[end - 1] == 0]
                except Exception as exc:
                    log.exception("the job store could not save %d writes", len(batch))
                    self.failure = f"the job store could not save: {exc}"
                    ok = False
                else:
                    self.failure = None
                for job_id in lost:  # refused by the fence: the job is another server's now
                    self.fenced += 1
                    self._owned.pop(job_id, None)
                    self.on_lost(job_id)
                resolve_all([(saved, ok) for entry in batch for saved in (entry.saved, entry.also)])
        finally:
            self._flushing = None

    async def get(self, job_id: str) -> Job | None:
        raw = await self.client.get(self._key(job_id))
        return from_record(json.loads(raw)) if raw else None

    async def unfinished(self, owner: str) -> list[Job]:
        members = await self.client.smembers(f"ami:unfinished:{owner}")
        ids = sorted(member.decode() if isinstance(member, bytes) else str(member) for member in members)
        jobs = [job for job_id in ids if (job := await self._owned_job(job_id, owner)) is not None]
        return sorted(jobs, key=lambda job: job.created_at)

    async def _owned_job(self, job_id: str, owner: str) -> Job | None:
        """An unfinished job of `owner`'s, with the fencing token its writes must carry, now this server's."""
        job = await self.get(job_id)
        if job is None or job.finished:
            return None
        job.fence = int(await self.client.get(self._fence(job_id)) or 0)
        self._owned[job_id] = owner
        return job

    @staticmethod
    def _lease(owner: str) -> str:
        return f"ami:lease:{owner}"

    async def hold_lease(self, owner: str) -> None:
        """Renew `owner`'s lease every third of its life; each time, jobs this server holds that are no longer in
        its set were adopted by another server while this one could not renew (paused, cut off): drop them."""
        self._held.add(owner)  # kept: `close` gives the lease up, whether or not this task still runs then
        while True:
            try:
                await self.client.set(self._lease(owner), "alive", px=int(self.lease_ttl * 1000))
                await self._drop_lost(owner)
            except Exception:
                log.exception("the lease of %s could not be renewed", owner)
            await asyncio.sleep(self.lease_ttl / 3)

    async def _drop_lost(self, owner: str) -> None:
        ids = [job_id for job_id, holder in self._owned.items() if holder == owner]
        if not ids:
            return
        present = await self.client.smismember(f"ami:unfinished:{owner}", ids)
        gone = [job_id for job_id, here in zip(ids, present, strict=True) if not here and job_id in self._owned]
        if gone:
            log.warning("%d jobs were adopted by another server while this one could not renew its lease; "
                        "cancelling this server's copies", len(gone))
        for job_id in gone:
            self._owned.pop(job_id, None)
            self.on_lost(job_id)

    async def adopt(self, owner: str) -> list[Job]:
        mine = f"ami:unfinished:{owner}"
        adopted = []
        async for key in self.client.scan_iter(match="ami:unfinished:*", count=100):
            name = key.decode() if isinstance(key, bytes) else str(key)
            other = name.removeprefix("ami:unfinished:")
            if other == owner or await self.client.exists(self._lease(other)):
                continue
            for member in await self.client.smembers(name):
                job_id = member.decode() if isinstance(member, bytes) else str(member)
                if await self.client.smove(name, mine, job_id):  # atomic: one adopter per job
                    token = await self.client.incr(self._fence(job_id))  # the old owner's writes are refused now
                    await self.client.expire(self._fence(job_id), self.ttl + 86_400)
                    job = await self.get(job_id)
                    if job is not None and not job.finished:
                        job.fence = int(token)
                        self._owned[job_id] = owner
                        adopted.append(job)
                    else:
                        await self.client.srem(mine, job_id)
        return adopted

    async def listen(self, on_finished: JobEvent, on_cancel: JobEvent, on_lost: JobEvent) -> None:
        self.on_lost = on_lost
        pubsub = self.client.pubsub()
        await pubsub.subscribe(self.FINISHED, self.CANCEL)  # subscribed once this returns: nothing later is missed

        async def run() -> None:
            try:
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    channel, job_id = message["channel"].decode(), message["data"].decode()
                    (on_finished if channel == self.FINISHED else on_cancel)(job_id)
            finally:
                await pubsub.aclose()

        self._listener = self.loop.create_task(run())

    def request_cancel(self, job_id: str) -> None:
        task = self.loop.create_task(self._publish_cancel(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_cancel(self, job_id: str) -> None:
        try:
            await self.client.publish(self.CANCEL, job_id)
        except Exception:
            log.exception("the cancel of job %s could not be published", job_id)

    async def purge(self, before: float) -> int:
        """Nothing to do: a finished job's record expires on its own, AMI_RESULT_TTL after it finished."""
        return 0


_: type[Store] = RedisStore  # the conformance check (mypy)
