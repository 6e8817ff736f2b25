"""Who may call each HTTP route, declared once per route (`rest.requires`), on the app with the fake pools."""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import QueryParams
from starlette.routing import Route
from starlette.testclient import TestClient

from server import rest
from server.access import header, presented_token
from server.app import create_app
from server.store import MemoryStore
from tests.unit.fakes import FakeDispatcher, unit_client, unit_settings

CLIENT, OPERATOR = "Bearer a-secret", "Bearer o-secret"


def test_every_http_route_declares_who_may_call_it(tmp_path: Path) -> None:
    app = create_app(unit_settings(tmp_path), MemoryStore(), FakeDispatcher)
    declared = {route.path: getattr(route.endpoint, "access", None) for route in app.routes if isinstance(route, Route)}
    assert set(declared.values()) <= {rest.ANYONE, rest.CLIENTS, rest.OPERATORS}, declared
    assert (declared["/healthz"], declared["/jobs/{job}"], declared["/metrics"]) == (
        rest.ANYONE, rest.CLIENTS, rest.OPERATORS)


def test_each_route_answers_as_it_declares(tmp_path: Path) -> None:
    settings = unit_settings(tmp_path, tokens=("alice:a-secret",), operator_tokens=("ops:o-secret",))
    with unit_client(settings) as client:
        for path in ("/metrics", "/pools", "/config.json"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": CLIENT}).status_code == 403, path
        for path in ("/metrics", "/config.json"):  # (the fake pools cannot describe themselves for /pools)
            assert client.get(path, headers={"Authorization": OPERATOR}).status_code == 200, path
        assert client.get("/jobs/nope").status_code == 401
        assert client.get("/jobs/nope", headers={"Authorization": CLIENT}).status_code == 404
        assert client.post("/jobs", json={"kind": "echo", "args": {}}).status_code == 401
        created = client.post("/jobs", json={"kind": "echo", "args": {}}, headers={"Authorization": CLIENT})
        assert created.status_code == 201
        assert client.get("/healthz").json() == {"ok": True}
        assert "reasons" not in client.get("/readyz").json()
        assert client.get("/readyz", headers={"Authorization": OPERATOR}).json()["reasons"] == []


def test_a_refusal_to_start_after_ray_is_up_is_one_line() -> None:
    """uvicorn would log Starlette's traceback and a line of its own; the CLI's filter leaves one line."""
    import logging

    from server.__main__ import OneLineStartupError

    app = create_app(unit_settings(Path("/nonexistent")), MemoryStore(), FakeDispatcher)
    app.state.startup_error = "the audio.speech kind asks each actor for 1 GPU and no node has that"
    kept = OneLineStartupError(app)

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, text, (), None)

    traceback = record(f"Traceback (most recent call last):\n  ...\nserver.config.SettingsError: "
                       f"{app.state.startup_error}")
    assert kept.filter(traceback) and traceback.getMessage() == f"error: {app.state.startup_error}"
    assert not kept.filter(record("Application startup failed. Exiting."))
    assert kept.filter(record("Started server process [1]"))


class Handshake:
    def __init__(self, query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.client = None
        self.scope = {"type": "websocket", "query_string": query, "headers": headers}


def test_a_token_is_read_from_the_raw_handshake_as_starlette_would_read_it() -> None:
    """The token comes from the ASGI scope as it is (Starlette's `headers` and `query_params`, kept on every socket,
    cost 0.86 KiB an idle connection); the query is read as Starlette's `QueryParams` reads it."""
    for query in (b"", b"token=abc", b"a=1&token=x%20y+z", b"token=one&token=two", b"token=", b"xtoken=1",
                  b"token", b"tokens=1&token=%E2%9C%93", b"a=%ZZ&token=t"):
        assert presented_token(Handshake(query, [])) == QueryParams(query).get("token"), query
    bearer = [(b"host", b"example"), (b"authorization", b"Bearer  s3cret "), (b"authorization", b"Bearer other")]
    assert presented_token(Handshake(b"token=q", bearer)) == "s3cret", "the header first, its first value"
    assert presented_token(Handshake(b"token=q", [(b"authorization", b"Basic eDp5")])) == "q"
    assert header(Handshake(b"", bearer), b"host") == "example" and header(Handshake(b"", []), b"origin") is None


def test_an_idle_socket_keeps_no_parsed_headers_or_query(tmp_path: Path) -> None:
    app = create_app(unit_settings(tmp_path, tokens=("alice:a-secret",)), MemoryStore(), FakeDispatcher)
    with TestClient(app) as client, client.websocket_connect("/ws?token=a-secret") as ws:
        ws.send_json({"op": "ping"})
        assert ws.receive_json()["type"] == "pong"
        (session,) = app.state.services.sessions
        kept = vars(session.websocket)
        assert session.tenant is not None and session.tenant.name == "alice"
        assert "_headers" not in kept and "_query_params" not in kept, sorted(kept)
