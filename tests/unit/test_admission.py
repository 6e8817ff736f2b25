"""Sessions and admission on the app's own code with fake pools: protocol, limits and refusals, in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from actors import all_kinds
from tests.unit.fakes import RefusingStore, unit_client, unit_settings


def frames(ws: Any, count: int) -> list[dict[str, Any]]:
    return [ws.receive_json() for _ in range(count)]


def test_a_submission_is_accepted_then_its_result_pushed(tmp_path: Path) -> None:
    with unit_client(unit_settings(tmp_path)) as client, client.websocket_connect("/ws") as ws:
        ws.send_json({"op": "submit", "kind": "echo", "args": {"x": 1}, "ref": "r1"})
        accepted, result = frames(ws, 2)
        assert accepted == {"type": "accepted", "job": accepted["job"], "kind": "echo", "ref": "r1"}
        assert (result["type"], result["job"], result["status"], result["result"], result["ref"]) == (
            "result", accepted["job"], "succeeded", {"x": 1}, "r1")
        ws.send_text(f"status {accepted['job']}")
        assert ws.receive_json()["state"] == "succeeded"
        ws.send_json({"op": "watch", "jobs": [accepted["job"]], "ref": "again"})
        assert ws.receive_json()["ref"] == "again"


def test_refusals_name_what_to_fix(tmp_path: Path) -> None:
    with unit_client(unit_settings(tmp_path)) as client, client.websocket_connect("/ws") as ws:
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"op": "submit", "kind": "nope", "args": {}}, "unknown_kind",
             f"kinds are {', '.join(sorted(all_kinds()))}"),
            ({"op": "submit", "kind": "euro.results", "args": {"date": " 2024-03-26 "}}, "invalid_args",
             "args.date must be a draw date"),
            ({"op": "submit", "kind": "euro.results", "args": {"date": "2024-01-03"}}, "invalid_args", "Wednesday"),
            ({"op": "submit", "kind": "euro.results", "args": {}}, "invalid_args", "args.date is required"),
            ({"op": "submit", "kind": "audio.length", "args": {"url": "ftp://x"}}, "invalid_args", "http(s) URL"),
            ({"op": "submit", "kind": "audio.length", "args": {"url": "http://a", "b": 1}}, "invalid_args",
             "unknown args: b"),
            ({"op": "submit", "kind": "echo", "args": [1]}, "bad_request", "'args' must be a JSON object"),
            ({"op": "status", "job": "never"}, "not_found", "no job 'never'"),
        ]
        for frame, code, words in cases:
            ws.send_json({**frame, "ref": code})
            refused = ws.receive_json()
            assert (refused["type"], refused["code"], refused["ref"]) == ("error", code, code), refused
            assert words in refused["message"], refused["message"]


def test_one_connection_may_hold_only_so_many_unfinished_jobs(tmp_path: Path) -> None:
    settings = unit_settings(tmp_path, max_jobs_per_connection=2)
    with unit_client(settings) as client, client.websocket_connect("/ws") as ws:
        held = []
        for n in range(2):
            ws.send_json({"op": "submit", "kind": "echo", "args": {"hold": True, "n": n}})
            held.append(ws.receive_json()["job"])
        ws.send_json({"op": "submit", "kind": "echo", "args": {}, "ref": "third"})
        assert ws.receive_json()["code"] == "busy"
        ws.send_json({"op": "cancel", "job": held[0]})
        assert ws.receive_json()["status"] == "cancelled"
        ws.send_json({"op": "submit", "kind": "echo", "args": {}, "ref": "room"})
        assert ws.receive_json()["type"] == "accepted"


def test_a_full_pool_and_a_failing_store_answer_busy(tmp_path: Path) -> None:
    store = RefusingStore()
    with unit_client(unit_settings(tmp_path, max_pending=1), store) as client, \
            client.websocket_connect("/ws") as ws:
        ws.send_json({"op": "submit", "kind": "echo", "args": {"hold": True}})
        held = ws.receive_json()["job"]
        ws.send_json({"op": "submit", "kind": "echo", "args": {}, "ref": "full"})
        full = ws.receive_json()
        assert (full["code"], "waiting" in full["message"]) == ("busy", True)
        ws.send_json({"op": "cancel", "job": held})
        assert ws.receive_json()["status"] == "cancelled"
        store.refusing = True
        ws.send_json({"op": "submit", "kind": "euro.results", "args": {"date": "2024-03-26"}, "ref": "unsaved"})
        unsaved = ws.receive_json()
        assert (unsaved["code"], "job store" in unsaved["message"]) == ("busy", True)
        post = client.post("/jobs", json={"kind": "euro.results", "args": {"date": "2024-03-26"}})
        assert post.status_code == 503


def test_rest_goes_through_the_same_admission(tmp_path: Path) -> None:
    with unit_client(unit_settings(tmp_path)) as client:
        made = client.post("/jobs", json={"kind": "echo", "args": {"via": "rest"}})
        assert made.status_code == 201
        assert _finished(client, made.json()["job"])["result"] == {"via": "rest"}
        refused = client.post("/jobs", json={"kind": "euro.results", "args": {"date": "2024-3-26"}})
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, "invalid_args")
        assert client.post("/jobs", json={"kind": "nope", "args": {}}).json()["error"]["code"] == "unknown_kind"
        assert client.post("/jobs", json={"kind": "echo", "args": "x"}).json()["error"]["code"] == "bad_request"


def _finished(client: TestClient, job: str) -> dict[str, Any]:
    for _ in range(100):  # the fake finishes a job on the next turn of the server's loop
        body: dict[str, Any] = client.get(f"/jobs/{job}").json()
        if body["state"] == "succeeded":
            return body
    raise AssertionError(f"job {job} did not finish")
