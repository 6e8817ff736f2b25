"""The job store: every job written before it is accepted, every result before it is pushed.

Three backends behind one small interface (`JobStore`, `ResultCache`, `ClusterEvents`): `memory` (nothing
survives a restart; benchmarks), `sqlite` (the embedded default, one file under the data dir), and `redis://`
(shared by several servers, with pub/sub telling each server when another finished a job). Writes never
block the event loop: they queue for a writer that commits them in order, in batches, and resolves each
write's future in the loop (True once durable, False if it could not be saved).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from server.jobs import Job, JobState

log = logging.getLogger("server.store")

Saved = asyncio.Future[bool]  # resolves in the event loop once a write is durable (False: it failed)
MAX_BATCH = 2000
WATCH_EVERY = 1.0  # seconds between looks at the SQLite file: deleted, replaced or overwritten is seen within this
SQLITE_MAGIC = b"SQLite format 3\x00"


class JobStore(Protocol):
    """Jobs and their results, written in order; what a restart or another server reads back."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def health(self) -> str | None: ...

    def unavailable(self) -> str | None: ...

    def put(self, job: Job) -> Saved: ...

    def finish(self, job: Job) -> Saved: ...

    def start(self, job: Job) -> None: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def unfinished(self, owner: str) -> list[Job]: ...

    async def purge(self, before: float) -> int: ...

    async def hold_lease(self, owner: str) -> None: ...

    async def adopt(self, owner: str) -> list[Job]: ...


class ResultCache(Protocol):
    """Results of cacheable kinds, reused for the same args."""

    async def cached(self, kind: str, args: dict[str, Any]) -> Any: ...

    def remember(self, kind: str, args: dict[str, Any], result: Any) -> None: ...


class ClusterEvents(Protocol):
    """What servers sharing a store tell each other."""

    def listen(self, on_finished: Callable[[str], None], on_cancel: Callable[[str], None]) -> None: ...

    def request_cancel(self, job_id: str) -> None: ...


def to_record(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "kind": job.kind, "args": job.args, "ref": job.ref, "owner": job.owner,
        "state": str(job.state), "created_at": job.created_at, "finished_at": job.finished_at,
        "result": job.result, "error": job.error, "restarts": job.restarts, "tenant": job.tenant,
        "priority": job.priority, "started_at": job.started_at,
    }


def from_record(record: dict[str, Any]) -> Job:
    job = Job(record["kind"], record["args"], record.get("ref"), id=record["id"], owner=record.get("owner") or "",
              state=JobState(record["state"]), created_at=float(record["created_at"]),
              restarts=int(record.get("restarts") or 0), tenant=record.get("tenant") or "",
              priority=5 if record.get("priority") is None else int(record["priority"]))
    job.finished_at = record.get("finished_at")
    job.started_at = record.get("started_at")
    job.result = record.get("result")
    job.error = record.get("error")
    job.published = job.finished
    return job


def _nobody(job_id: str) -> None:
    return None


def cache_key(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


class Store:
    """The interface; also the `memory` backend, which keeps the last `max_finished` results in memory."""

    MEMORY_CACHE = 10_000

    def __init__(self, max_finished: int = 100_000) -> None:
        self._results: dict[tuple[str, str], Any] = {}
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_finished = max_finished
        self.failure: str | None = None  # why the last write failed, until one succeeds again
        self.on_lost: Callable[[str], None] = _nobody  # told of a job another server now owns (shared stores)

    async def open(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def close(self) -> None:
        pass

    def health(self) -> str | None:
        """Why the store cannot take writes now, or None when it can."""
        return self.failure

    def unavailable(self) -> str | None:
        """Why no job may be accepted now (the store cannot keep it), or None. Unlike a failed write, this lasts
        until the store itself recovers, so refusing new jobs meanwhile cannot keep it from recovering."""
        return None

    def _done(self, ok: bool = True) -> Saved:
        future = self.loop.create_future()
        future.set_result(ok)
        return future

    def put(self, job: Job) -> Saved:
        return self._done()

    def finish(self, job: Job) -> Saved:
        self._finished[job.id] = to_record(job)
        while len(self._finished) > self.max_finished:
            self._finished.popitem(last=False)
        return self._done()

    def start(self, job: Job) -> None:
        """Note that a job is running, for other servers' `status` (shared stores; best effort)."""

    async def get(self, job_id: str) -> Job | None:
        record = self._finished.get(job_id)
        return None if record is None else from_record(record)

    async def unfinished(self, owner: str) -> list[Job]:
        return []

    async def hold_lease(self, owner: str) -> None:
        """Say, for as long as this runs, that `owner` is alive (shared stores; others adopt a dead one's jobs)."""

    async def adopt(self, owner: str) -> list[Job]:
        """Unfinished jobs of servers whose lease ran out, now `owner`'s (one adopter per job); shared stores."""
        return []

    async def purge(self, before: float) -> int:
        expired = [job_id for job_id, record in self._finished.items() if (record["finished_at"] or 0) < before]
        for job_id in expired:
            del self._finished[job_id]
        return len(expired)

    async def cached(self, kind: str, args: dict[str, Any]) -> Any:
        """The saved result of an earlier success of a cacheable kind with these args, or None."""
        return self._results.get((kind, cache_key(args)))

    def remember(self, kind: str, args: dict[str, Any], result: Any) -> None:
        """Keep the result of a success of a cacheable kind (best effort: nothing waits for it)."""
        if len(self._results) >= self.MEMORY_CACHE:
            self._results.pop(next(iter(self._results)))
        self._results[(kind, cache_key(args))] = result

    def listen(self, on_finished: Callable[[str], None], on_cancel: Callable[[str], None]) -> None:
        """Be told of jobs finished, or cancels asked for, on other servers (shared stores only)."""

    def request_cancel(self, job_id: str) -> None:
        pass


class SqliteStore(Store):
    """One SQLite file in WAL mode; a writer thread commits queued writes in batches."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, args TEXT NOT NULL, ref TEXT, owner TEXT NOT NULL,
            state TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL, result TEXT, error TEXT,
            restarts INTEGER NOT NULL DEFAULT 0, tenant TEXT NOT NULL DEFAULT '',
            priority INTEGER NOT NULL DEFAULT 5, started_at REAL);
        CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (owner) WHERE finished_at IS NULL;
        CREATE INDEX IF NOT EXISTS jobs_finished_at ON jobs (finished_at);
        CREATE TABLE IF NOT EXISTS results (kind TEXT NOT NULL, key TEXT NOT NULL, result TEXT NOT NULL,
            PRIMARY KEY (kind, key));
    """
    REMEMBER = "INSERT OR REPLACE INTO results (kind, key, result) VALUES (?, ?, ?)"
    INSERT = ("INSERT OR REPLACE INTO jobs (id, kind, args, ref, owner, state, created_at, finished_at, result, "
              "error, restarts, tenant, priority, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    ADDED_COLUMNS = {"tenant": "TEXT NOT NULL DEFAULT ''", "priority": "INTEGER NOT NULL DEFAULT 5",
                     "started_at": "REAL"}

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._writes: queue.SimpleQueue[tuple[str, tuple[Any, ...], Saved | None] | None] = queue.SimpleQueue()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-read")
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file this store writes
        self.lost: str | None = None  # why the file cannot be trusted now (deleted, replaced, damaged), until it can
        self._watcher: asyncio.Task[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it fast
        connection.execute("PRAGMA busy_timeout=5000")
        return connection

    async def open(self) -> None:
        await super().open()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._connect()
        self.create_tables(connection)
        connection.close()
        self._identity = self._file_identity()
        self._read = await self.loop.run_in_executor(self._reader, self._connect)
        self._thread = threading.Thread(target=self._write_batches, name="store-write", daemon=True)
        self._thread.start()
        self._watcher = asyncio.create_task(self._watch())

    @classmethod
    def create_tables(cls, connection: sqlite3.Connection) -> list[str]:
        """The tables, and the columns a file written before tenants existed lacks; the jobs table's columns."""
        connection.executescript(cls.SCHEMA)
        columns = [row[1] for row in connection.execute("PRAGMA table_info(jobs)")]
        for column, definition in cls.ADDED_COLUMNS.items():
            if column not in columns:
                connection.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")
                columns.append(column)
        return columns

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _file_problem(self) -> str | None:
        """Why the file at `path` is not the database this store opened, or not a database any more; cheap."""
        identity = self._file_identity()
        if identity is None:
            return f"its file {self.path} was deleted"
        if identity != self._identity:
            return f"its file {self.path} was replaced"
        try:
            with open(self.path, "rb") as head:
                if head.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    return f"its file {self.path} is no longer a SQLite database"
        except OSError as exc:
            return f"its file {self.path} cannot be read: {exc.strerror or exc}"
        return None

    async def _watch(self) -> None:
        """Every WATCH_EVERY s: is the file still the one opened, and a database? A write to a deleted file would
        succeed and be lost, so the writer checks before each batch too; this tells /healthz without a write.
        When the file the store opened is back (moved back, restored in place and sound), writes resume."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            problem = await asyncio.to_thread(self._file_problem)
            if problem is None and self.lost is not None:
                problem = await asyncio.to_thread(_damaged, self.path)
                if problem is None:
                    log.warning("the job store's file %s is sound again; saving resumes", self.path)
            if problem != self.lost and problem is not None:
                log.error("the job store is unavailable: %s", problem)
            self.lost = problem

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self._writes.put(None)
        await asyncio.to_thread(self._thread.join, 30)
        await self.loop.run_in_executor(self._reader, self._read.close)
        self._reader.shutdown()

    def _write(self, sql: str, params: tuple[Any, ...]) -> Saved:
        saved = self.loop.create_future()
        self._writes.put((sql, params, saved))
        return saved

    def put(self, job: Job) -> Saved:
        return self._write(self.INSERT, (
            job.id, job.kind, json.dumps(job.args), job.ref, job.owner, str(job.state), job.created_at,
            job.finished_at, _dump(job.result), _dump(job.error), job.restarts, job.tenant, job.priority,
            job.started_at))

    def finish(self, job: Job) -> Saved:
        # The whole record, not an UPDATE: a result is durable even if the job's first save went to a file that was
        # replaced since (an UPDATE of a row that is not there changes nothing, and says nothing).
        return self.put(job)

    def remember(self, kind: str, args: dict[str, Any], result: Any) -> None:
        self._writes.put((self.REMEMBER, (kind, cache_key(args), json.dumps(result)), None))

    async def cached(self, kind: str, args: dict[str, Any]) -> Any:
        rows = await self._query("SELECT result FROM results WHERE kind = ? AND key = ?", (kind, cache_key(args)))
        return json.loads(rows[0]["result"]) if rows else None

    def health(self) -> str | None:
        if not self._thread.is_alive():
            return "the job store's writer has stopped"
        return self.unavailable() or self.failure

    def unavailable(self) -> str | None:
        return None if self.lost is None else f"the job store is unavailable: {self.lost}"

    def _write_batches(self) -> None:
        """Commit queued writes in batches until told to stop; no write, however bad, stops it."""
        connection: sqlite3.Connection | None = None
        running = True
        while running:
            first = self._writes.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    running = False
                    break
                batch.append(item)
            problem = self.lost or self._file_problem()
            try:
                if problem is not None:  # never acknowledge a write to a file that is not the store's any more
                    raise StoreLost(problem)
                connection = connection or self._connect()
                outcomes = self._commit(connection, batch)
            except Exception as exc:  # the file itself is unusable: fail this batch, try afresh with the next
                if isinstance(exc, StoreLost):
                    self.lost = str(exc)
                else:
                    log.exception("the job store could not save %d writes", len(batch))
                    self.lost = _damaged(self.path)  # damaged, or a passing trouble (a full disk)?
                self.failure = f"the job store could not save: {exc}"
                outcomes = [False] * len(batch)
                _close_quietly(connection)
                connection = None
            else:
                self.failure = None if all(outcomes) else self.failure
            self._resolve([(saved, ok) for (_, _, saved), ok in zip(batch, outcomes, strict=True)])
        _close_quietly(connection)

    def _commit(self, connection: sqlite3.Connection, batch: list[tuple[str, tuple[Any, ...], Saved | None]]
                ) -> list[bool]:
        """Commit the batch in one transaction; if that fails, each write alone, so only the bad ones fail.

        Consecutive writes of one statement go to SQLite in one `executemany`: this thread then holds the GIL,
        which the event loop needs, for a call per run of writes instead of one per write.
        """
        try:
            connection.execute("BEGIN")
            for sql, params in _runs(batch):
                self._apply(connection, sql, params)
            connection.execute("COMMIT")
            return [True] * len(batch)
        except Exception:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if len(batch) == 1:
                log.exception("the job store could not save a write")
                self.failure = "the job store could not save a write"
                return [False]
        return [self._commit(connection, [write])[0] for write in batch]

    def _apply(self, connection: sqlite3.Connection, sql: str, params: list[tuple[Any, ...]]) -> None:
        connection.executemany(sql, params)

    def _resolve(self, outcomes: list[tuple[Saved | None, bool]]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to tell
            self.loop.call_soon_threadsafe(_resolve_all, outcomes)

    async def _query(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        def run() -> list[sqlite3.Row]:
            self._read.row_factory = sqlite3.Row
            return list(self._read.execute(sql, params))

        return await self.loop.run_in_executor(self._reader, run)

    async def get(self, job_id: str) -> Job | None:
        rows = await self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _row_job(rows[0]) if rows else None

    async def unfinished(self, owner: str) -> list[Job]:
        """Every unfinished job in the file, whoever saved it: one server opens a data dir at a time, so
        the one that opens it resumes all of it, whatever port or id the last one had."""
        rows = await self._query("SELECT * FROM jobs WHERE finished_at IS NULL ORDER BY created_at", ())
        return [_row_job(row) for row in rows]

    async def purge(self, before: float) -> int:
        def run() -> int:
            return self._read.execute("DELETE FROM jobs WHERE finished_at < ?", (before,)).rowcount

        return await self.loop.run_in_executor(self._reader, run)


class StoreLost(Exception):
    """The SQLite file is not the one the store opened, or not a database any more."""


def quick_check(path: Path) -> str | None:
    """SQLite's quick check of the file, read only: None when it passes, else what is wrong (in a few words)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as connection:
            rows = connection.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    verdict = "; ".join(str(row[0]) for row in rows[:3])
    return None if verdict == "ok" else verdict


def _damaged(path: Path) -> str | None:
    """Why the store cannot trust its file, from SQLite's quick check, or None."""
    problem = quick_check(path)
    return None if problem is None else f"its file {path} is damaged: {problem}"


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _row_job(row: sqlite3.Row) -> Job:
    record = dict(row)
    record["args"] = json.loads(record["args"])
    record["result"] = json.loads(record["result"]) if record["result"] is not None else None
    record["error"] = json.loads(record["error"]) if record["error"] is not None else None
    return from_record(record)


def _runs(batch: list[tuple[str, tuple[Any, ...], Saved | None]]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The batch's writes as runs of one statement, in order."""
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for sql, params, _ in batch:
        if runs and runs[-1][0] is sql:
            runs[-1][1].append(params)
        else:
            runs.append((sql, [params]))
    return runs


def _close_quietly(connection: sqlite3.Connection | None) -> None:
    if connection is not None:
        try:
            connection.close()
        except Exception:
            log.exception("closing the job store's connection failed")


def _resolve_all(outcomes: list[tuple[Saved | None, bool]]) -> None:
    for saved, ok in outcomes:
        if saved is not None and not saved.done():
            saved.set_result(ok)


class RedisStore(Store):
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
        super().__init__()
        self.url = url
        self.ttl = int(ttl)
        self.lease_ttl = lease_ttl
        self._held: set[str] = set()  # owners whose lease this store renews
        self._owned: dict[str, str] = {}  # job id -> owner: saved as this server's, not finished by it yet
        self.fenced = 0  # writes refused because another server owns the job now
        # (write, its answer, the job whose fenced write it queues last)
        self._pending: list[tuple[Callable[[Any], None], Saved | None, str | None]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    async def open(self) -> None:
        import redis.asyncio as redis

        await super().open()
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
            await asyncio.gather(self._listener, return_exceptions=True)
        while self._flushing is not None or self._pending:
            if self._flushing is None:
                self._flushing = self.loop.create_task(self._flush())
            await self._flushing
        await self.client.aclose()

    @staticmethod
    def _key(job_id: str) -> str:
        return f"ami:job:{job_id}"

    @staticmethod
    def _fence(job_id: str) -> str:
        return f"ami:fence:{job_id}"

    def put(self, job: Job) -> Saved:
        record = json.dumps(to_record(job))

        def write(pipe: Any) -> None:
            pipe.set(self._key(job.id), record)
            pipe.sadd(f"ami:unfinished:{job.owner}", job.id)

        return self._enqueue(write, owns=job)

    def _fenced(self, job: Job, what: str, pipe: Any) -> None:
        record = json.dumps(to_record(job))
        keys = [self._key(job.id), f"ami:unfinished:{job.owner}", self._fence(job.id)]
        # EVAL, not EVALSHA: a Redis restarted meanwhile has forgotten loaded scripts, and the text is small.
        pipe.eval(self.FENCED_SET, len(keys), *keys, record, self.ttl, job.fence, job.id, self.FINISHED, what)

    def finish(self, job: Job) -> Saved:
        self._owned.pop(job.id, None)
        return self._enqueue(lambda pipe: self._fenced(job, "finish", pipe), fenced=job.id)

    def start(self, job: Job) -> None:  # never resurrects a purged or finished record (SET XX)
        self._enqueue(lambda pipe: self._fenced(job, "start", pipe), wanted=False, fenced=job.id)

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
        self._pending.append((write, saved if wanted else None, fenced))
        if owns is not None:
            owner = owns.owner
            saved.add_done_callback(lambda done: self._owned.__setitem__(owns.id, owner) if done.result() else None)
        if self._flushing is None:
            self._flushing = self.loop.create_task(self._flush())
        return saved

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                ok = True
                lost: list[str] = []
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        ends = []
                        for write, _, _ in batch:
                            write(pipe)
                            ends.append(len(pipe.command_stack))
                        answers = await pipe.execute()
                    lost = [job_id for (_, _, job_id), end in zip(batch, ends, strict=True)
                            if job_id is not None and answers[end - 1] == 0]
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
                _resolve_all([(saved, ok) for _, saved, _ in batch])
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

    def listen(self, on_finished: Callable[[str], None], on_cancel: Callable[[str], None]) -> None:
        ready = self.loop.create_future()

        async def run() -> None:
            pubsub = self.client.pubsub()
            await pubsub.subscribe(self.FINISHED, self.CANCEL)
            ready.set_result(None)
            try:
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    channel, job_id = message["channel"].decode(), message["data"].decode()
                    (on_finished if channel == self.FINISHED else on_cancel)(job_id)
            finally:
                await pubsub.aclose()

        self._listener = self.loop.create_task(run())
        self.subscribed = ready

    def request_cancel(self, job_id: str) -> None:
        async def publish() -> None:
            await self.client.publish(self.CANCEL, job_id)

        self.loop.create_task(publish())


def open_store(kind: str, data_dir: Path, ttl: float, max_finished: int = 100_000, lease_ttl: float = 15.0
               ) -> Store:
    if kind == "memory":
        return Store(max_finished)
    if kind == "sqlite":
        return SqliteStore(data_dir / "jobs.sqlite3")
    return RedisStore(kind, ttl, lease_ttl)


async def purge_forever(store: Store, ttl: float, every: float = 3600.0) -> None:
    """Delete results older than the TTL, once an `every` seconds."""
    while True:
        try:
            removed = await store.purge(time.time() - ttl)
            if removed:
                log.info("purged %d expired jobs", removed)
        except Exception:
            log.exception("purging expired jobs failed")
        await asyncio.sleep(every)
