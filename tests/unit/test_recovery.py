"""The SQLite job store at start-up: a damaged file or a data dir that cannot be written is one line and exit 2
before Ray starts; `python -m server recover-store` salvages what a damaged file still holds."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import recovery
from server.store import SqliteStore
from tests.helpers import ROOT

PAGE = 4096


def server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", "--port", "0", "--no-dashboard", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def assert_refused_before_ray(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "Ray" not in done.stdout and "Started a local Ray" not in done.stderr, "it stopped before Ray started"


def make_store(path: Path, jobs: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(SqliteStore.SCHEMA)
        for n in range(jobs):
            connection.execute(SqliteStore.INSERT, (f"job-{n:04d}", "echo", json.dumps({"n": n, "pad": "x" * 1000}),
                                                    None, "srv", "succeeded", 1.0 + n, 2.0 + n, json.dumps({"n": n}),
                                                    None, 0, "alice", 5, 1.5 + n))
        connection.commit()


def test_a_database_of_random_bytes_stops_the_start_with_the_recovery_command(tmp_path: Path) -> None:
    (tmp_path / recovery.DB_NAME).write_bytes(os.urandom(64 * 1024))
    done = server("--data-dir", str(tmp_path))
    assert_refused_before_ray(done, str(tmp_path / recovery.DB_NAME), "damaged", "recover-store")


def test_a_data_dir_that_cannot_be_made_stops_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = server("--data-dir", str(blocker / "data"))
    assert_refused_before_ray(done, "AMI_DATA_DIR", "cannot be written")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (a tmpfs mounted ro): root writes through a directory's permissions, not through this."""
    where = tmp_path / "ro"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_read_only_data_dir_stops_the_start(read_only_dir: Path) -> None:
    done = server("--data-dir", str(read_only_dir))
    assert_refused_before_ray(done, str(read_only_dir), "AMI_DATA_DIR", "cannot be written")


def test_recover_store_moves_the_damaged_file_aside_and_salvages_the_readable_jobs(tmp_path: Path) -> None:
    path = tmp_path / recovery.DB_NAME
    make_store(path, 400)
    pages = path.stat().st_size // PAGE
    with open(path, "r+b") as damaged:  # one page in the middle of the table overwritten: a bad sector
        damaged.seek((pages // 2) * PAGE)
        damaged.write(os.urandom(PAGE))
    assert recovery.damage(path) is not None
    assert server("--data-dir", str(tmp_path)).returncode == 2

    done = subprocess.run([sys.executable, "-m", "server", "recover-store", "--data-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    saved = int(done.stdout.split("salvaged ")[1].split()[0])
    assert 380 <= saved <= 400 and "of 400 found" in done.stdout, done.stdout
    assert recovery.damage(path) is None, "the fresh database is sound"
    with contextlib.closing(sqlite3.connect(path)) as fresh:
        assert fresh.execute("SELECT count(*) FROM jobs").fetchone()[0] == saved
        assert fresh.execute("SELECT tenant, started_at FROM jobs WHERE id = 'job-0000'").fetchone() in (
            ("alice", 1.5), None)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(recovery.DB_NAME + ".damaged-")]
    assert len(aside) == 1, "the damaged file is kept, beside the fresh one"
    recovery.check_database(path)  # the next start goes on


def test_recover_store_on_a_sound_store_changes_nothing(tmp_path: Path) -> None:
    make_store(tmp_path / recovery.DB_NAME, 3)
    before = (tmp_path / recovery.DB_NAME).read_bytes()
    done = subprocess.run([sys.executable, "-m", "server", "recover-store", "--data-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "sound" in done.stdout
    assert (tmp_path / recovery.DB_NAME).read_bytes() == before
