"""The error table: refusals map to wire codes by isinstance; each close code carries its one reason, and a server
that stops closes its sockets with the code uvicorn really sends (real uvicorn, the fake pools, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from actors import InvalidArgs
from server.errors import (
    CLOSE_REASONS,
    CloseCode,
    ErrorCode,
    PoolFull,
    Refused,
    RequestError,
    TenantQuota,
    http_status,
    refusals_answered,
)
from server.store import MemoryStore
from tests.helpers import ServerThread, run
from tests.unit.fakes import FakeDispatcher, unit_settings


def test_every_close_code_has_its_one_reason_within_the_protocols_limit() -> None:
    assert set(CLOSE_REASONS) == set(CloseCode)
    assert all(0 < len(code.reason.encode()) <= 123 for code in CloseCode)  # RFC 6455: 125 bytes with the code


def test_a_server_that_stops_closes_its_sockets_with_1012(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = unit_settings(tmp_path)
        running = ServerThread(settings, store=MemoryStore(), make_dispatcher=FakeDispatcher)
        with running:
            ws = await websockets.connect(running.ws_url)
            await ws.send('{"op":"ping"}')
            assert '"pong"' in str(await ws.recv())
            running.server.should_exit = True
            try:
                await ws.recv()
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == CloseCode.SERVICE_RESTART
            else:
                raise AssertionError("the socket stayed open")

    run(scenario())


class NewRefusal(PoolFull):
    """A refusal added later, that nobody listed in the table."""


class NewQuota(TenantQuota):
    pass


@pytest.mark.parametrize(("exc", "code", "status"), [
    (NewRefusal("no actor"), ErrorCode.BUSY, 503),
    (NewQuota("slow down", 1500), ErrorCode.RATE_LIMITED, 429),
    (Refused("anything else"), ErrorCode.BUSY, 503),
    (InvalidArgs("'url' is required"), ErrorCode.INVALID_ARGS, 422),
])
def test_a_refusal_maps_as_its_nearest_listed_parent(exc: Exception, code: ErrorCode, status: int) -> None:
    with pytest.raises(RequestError) as raised, refusals_answered("r1", ("body", "args")):
        raise exc
    answered = raised.value
    assert (answered.code, http_status(answered.code), answered.ref, answered.loc) == (code, status, "r1",
                                                                                        ("body", "args"))
    assert answered.retry_after_ms == (1500 if isinstance(exc, TenantQuota) else None)
