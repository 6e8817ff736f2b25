"""The SQLite job store at start-up: a data dir that cannot be written, or a database file that is damaged, is one
line and exit status 2 before Ray starts; `python -m server recover-store` moves a damaged file aside and salvages
every job record it can still read into a fresh database.

Python's sqlite3 module has no binding for SQLite's own recovery (the CLI's `.recover`), so the salvage reads the
damaged file row by row: a row on a broken page is lost, the rows around it are not.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from server.config import Settings, SettingsError
from server.store import SqliteStore, quick_check

DB_NAME = "jobs.sqlite3"
RECOVER = "python -m server recover-store"


def database(settings: Settings) -> Path:
    return settings.data_dir / DB_NAME


def check_data_dir(settings: Settings) -> None:
    """The data dir exists (or can be made) and takes a write: the store and the embedded Ray's process record."""
    where = settings.data_dir
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".write-check-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise SettingsError(f"the data dir {where} (AMI_DATA_DIR) cannot be written: {exc.strerror or exc}") from None


def check_database(path: Path) -> None:
    """A database file that exists must open and pass SQLite's quick check."""
    problem = damage(path)
    if problem is not None:
        raise SettingsError(f"the job store {path} is damaged ({problem}); `{RECOVER}` (with the same AMI_DATA_DIR) "
                            f"moves it aside and salvages its jobs into a fresh one")


def damage(path: Path) -> str | None:
    """What is wrong with the database at `path`, or None when it is sound (or absent: a fresh one is made)."""
    return quick_check(path) if path.exists() else None


def recover(settings: Settings) -> str:
    """Move the damaged database aside and salvage its job records into a fresh one; what was done, in one line."""
    path = database(settings)
    if not path.exists():
        return f"no job store at {path}: nothing to recover"
    if damage(path) is None:
        return f"the job store {path} is sound: nothing to do"
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{aside}{suffix}")
    rows, seen = salvage(aside)
    with contextlib.closing(sqlite3.connect(path)) as fresh:
        columns = SqliteStore.create_tables(fresh)
        saved = 0
        for row in rows:
            known = {key: value for key, value in row.items() if key in columns}
            if not {"id", "kind", "args", "owner", "state", "created_at"} <= set(known):
                continue
            names = ", ".join(known)
            fresh.execute(f"INSERT OR REPLACE INTO jobs ({names}) VALUES ({', '.join('?' * len(known))})",
                          tuple(known.values()))
            saved += 1
        fresh.commit()
    return (f"salvaged {saved} job records of {seen} found into a fresh {path}; the damaged file is now {aside}")


def salvage(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every job row that can still be read, one at a time by rowid, and how many rowids the table claims."""
    rows: list[dict[str, Any]] = []
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.DatabaseError:
        return rows, 0
    connection.row_factory = sqlite3.Row
    with contextlib.closing(connection):
        try:
            top = connection.execute("SELECT max(rowid) FROM jobs").fetchone()[0] or 0
        except sqlite3.DatabaseError:  # the table's index pages are broken too: no row is smaller than 32 bytes
            top = path.stat().st_size // 32
        for rowid in range(1, top + 1):
            try:
                row = connection.execute("SELECT * FROM jobs WHERE rowid = ?", (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row is not None:
                rows.append(dict(row))
        return rows, top
