"""The `sqlite` backend, the embedded default: one SQLite file in WAL mode under the data dir, written by one thread
that commits queued writes in order, in batches, and watched for being deleted, replaced or damaged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from server.jobs import Job
from server.store.interface import MAX_BATCH, Saved, SingleServer, Store, cache_key, from_record, resolve_all

log = logging.getLogger("server.store")

WATCH_EVERY = 1.0  # seconds between looks at the SQLite file: deleted, replaced or overwritten is seen within this
SQLITE_MAGIC = b"SQLite format 3\x00"
Write = tuple[str, tuple[Any, ...], Saved | None]  # a statement, its parameters, and who waits for it (if anyone)


def connect(path: Path, factory: type[sqlite3.Connection] = sqlite3.Connection) -> sqlite3.Connection:
    """A connection to the store's file as the store uses it (`factory`: a Connection subclass, e.g. one that fails
    like a full disk in the tests)."""
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, factory=factory)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it fast
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


class SqliteStore(SingleServer):
    """One SQLite file in WAL mode; a writer thread commits queued writes in batches.

    `connection_class` is the sqlite3.Connection subclass the store connects with: the tests' seam for a disk that
    fails on demand."""

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

    def __init__(self, path: Path, connection_class: type[sqlite3.Connection] = sqlite3.Connection) -> None:
        self.path = path
        self.connection_class = connection_class
        self.failure: str | None = None  # why the last write failed, until one succeeds again
        self._writes: queue.SimpleQueue[list[Write] | None] = queue.SimpleQueue()
        self._turn: list[Write] = []  # this turn of the event loop's writes, handed to the writer at its end
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-read")
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file this store writes
        self.lost: str | None = None  # why the file cannot be trusted now (deleted, replaced, damaged), until it can
        self._watcher: asyncio.Task[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, self.connection_class)

    async def open(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._connect()
        self.create_tables(connection)
        connection.close()
        self._identity = self._file_identity()
        self._head = os.open(self.path, os.O_RDONLY)  # the opened file's first bytes, read without opening it again
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
        try:  # the same inode as the path's (checked above), so an overwrite in place shows here
            if os.pread(self._head, len(SQLITE_MAGIC), 0) != SQLITE_MAGIC:
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
            await asyncio.gather(self._watcher, return_exceptions=True)
        self._hand_over()
        self._writes.put(None)
        await asyncio.to_thread(self._thread.join, 30)
        await self.loop.run_in_executor(self._reader, self._read.close)
        self._reader.shutdown()
        os.close(self._head)

    def _write(self, sql: str, params: tuple[Any, ...]) -> Saved:
        saved = self.loop.create_future()
        self._queue((sql, params, saved))
        return saved

    def _queue(self, write: Write) -> None:
        """A turn of the event loop hands its writes to the writer together: one hand-off, and one wake of the
        writer's thread (which then takes the GIL from the event loop), a turn instead of one a write."""
        if not self._turn:
            self.loop.call_soon(self._hand_over)
        self._turn.append(write)

    def _hand_over(self) -> None:
        if self._turn:
            turn, self._turn = self._turn, []
            self._writes.put(turn)

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
        self._queue((self.REMEMBER, (kind, cache_key(args), json.dumps(result)), None))

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
            batch = first
            while len(batch) < MAX_BATCH:  # the turns that came meanwhile too (one turn's may pass MAX_BATCH)
                try:
                    more = self._writes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    running = False
                    break
                batch += more
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

    def _commit(self, connection: sqlite3.Connection, batch: list[Write]
                ) -> list[bool]:
        """Commit the batch in one transaction; if that fails, each write alone, so only the bad ones fail.

        Consecutive writes of one statement go to SQLite in one `executemany`: this thread then holds the GIL,
        which the event loop needs, for a call per run of writes instead of one per write.
        """
        try:
            connection.execute("BEGIN")
            for sql, params in _runs(batch):
                connection.executemany(sql, params)
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

    def _resolve(self, outcomes: list[tuple[Saved | None, bool]]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to tell
            self.loop.call_soon_threadsafe(resolve_all, outcomes)

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


def _runs(batch: list[Write]) -> list[tuple[str, list[tuple[Any, ...]]]]:
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


_: type[Store] = SqliteStore  # the conformance check (mypy)
