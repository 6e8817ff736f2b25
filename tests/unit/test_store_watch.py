"""A SQLite store whose file is deleted, moved away or overwritten while the server runs says so within seconds
(/healthz and /readyz 503, submissions `busy`), acknowledges nothing it cannot keep, and resumes when its file is
back. The app's own code on the fake pools, with a real SQLite store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from server.store import SqliteStore
from tests.helpers import wait_until
from tests.unit.fakes import unit_client, unit_settings

NOTICED = 5.0  # seconds within which the server must notice


def submit(ws: Any, n: int) -> dict[str, Any]:
    ws.send_json({"op": "submit", "kind": "echo", "args": {"n": n}, "ref": str(n)})
    frame: dict[str, Any] = ws.receive_json()
    if frame["type"] == "accepted":
        assert ws.receive_json()["type"] == "result"
    return frame


def test_a_file_moved_away_stops_acceptance_and_its_return_resumes_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with unit_client(unit_settings(tmp_path), store=SqliteStore(path)) as client, \
            client.websocket_connect("/ws") as ws:
        before = submit(ws, 0)
        assert before["type"] == "accepted"
        away = tmp_path / "elsewhere.sqlite3"
        os.rename(path, away)  # as `rm` would for the server's eyes, but it can come back
        assert wait_until(lambda: client.get("/healthz").status_code == 503, NOTICED)
        assert "deleted" in client.get("/healthz").json()["reason"]
        assert client.get("/readyz").status_code == 503
        refused = [submit(ws, n) for n in range(1, 21)]
        assert {(frame["type"], frame.get("code")) for frame in refused} == {("error", "busy")}
        assert "the job store is unavailable" in refused[0]["message"]
        posted = client.post("/jobs", json={"kind": "echo", "args": {}})
        assert posted.status_code == 503
        os.rename(away, path)
        assert wait_until(lambda: client.get("/healthz").status_code == 200, NOTICED)
        assert submit(ws, 21)["type"] == "accepted"
        assert client.get(f"/jobs/{before['job']}").json()["state"] == "succeeded", "the saved job is there"


def test_a_file_overwritten_in_place_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with unit_client(unit_settings(tmp_path), store=SqliteStore(path)) as client, \
            client.websocket_connect("/ws") as ws:
        assert submit(ws, 0)["type"] == "accepted"
        with open(path, "r+b") as file:
            file.write(os.urandom(4096))  # same file, same inode: garbage where the database was
        assert wait_until(lambda: client.get("/healthz").status_code == 503, NOTICED)
        assert "no longer a SQLite database" in client.get("/healthz").json()["reason"]
        assert submit(ws, 1)["code"] == "busy"


def test_a_deleted_file_is_never_written_to_and_a_new_one_needs_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with unit_client(unit_settings(tmp_path), store=SqliteStore(path)) as client, \
            client.websocket_connect("/ws") as ws:
        assert submit(ws, 0)["type"] == "accepted"
        path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        assert wait_until(lambda: client.get("/healthz").status_code == 503, NOTICED)
        path.write_bytes(b"")  # another file where the store's was: not the one it opened
        assert submit(ws, 1)["code"] == "busy"
        assert wait_until(lambda: "replaced" in client.get("/healthz").json()["reason"], NOTICED)
        assert submit(ws, 2)["code"] == "busy"
        assert path.stat().st_size == 0, "nothing was written to a file the store did not open"
