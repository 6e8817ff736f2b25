"""Fair queues on real Ray: one tenant's backlog does not make another tenant wait behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tests.helpers import FixtureHTTP, ServerThread, run, settings_for

A, B = "alice:a-secret", "bob:b-secret"


@pytest.fixture(scope="module")
def one_slot(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("tenants"), pools=(("echo", 1),), tokens=(A, B))
    with ServerThread(settings) as running:
        running.wait_ready()
        # One job at a time on the one echo actor, so that the order jobs finish in is the order they started in.
        running.app.state.services.dispatcher.pools["echo"].capacity = 1
        yield running


async def connect(server: ServerThread, entry: str) -> Any:
    token = entry.partition(":")[2]
    return await websockets.connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"})


async def answer(ws: Any, ref: str) -> dict[str, Any]:
    """The next frame carrying `ref` (results of other jobs may come first; they are not what we wait for)."""
    while (frame := json.loads(await asyncio.wait_for(ws.recv(), 30))).get("ref") != ref or frame["type"] == "result":
        pass
    return frame


def test_a_tenant_with_nothing_queued_goes_next_and_positions_shrink(one_slot: ServerThread) -> None:
    async def scenario() -> None:
        alice, bob = await connect(one_slot, A), await connect(one_slot, B)
        await alice.send(json.dumps({"op": "submit", "kind": "echo", "args": {"n": -1, "delay_ms": 1500},
                                     "ref": "busy"}))
        await answer(alice, "busy")  # it holds the one slot
        backlog = []
        for n in range(50):
            await alice.send(json.dumps({"op": "submit", "kind": "echo", "args": {"n": n, "delay_ms": 20},
                                         "ref": f"a{n}"}))
            accepted = await answer(alice, f"a{n}")
            assert accepted["position"] == n, "it waits behind Alice's earlier ones"
            backlog.append(accepted["job"])
        await bob.send(json.dumps({"op": "submit", "kind": "echo", "args": {"who": "bob"}, "ref": "b"}))
        bobs = await answer(bob, "b")
        assert bobs["position"] == 0, "Bob has had no turn: his job is next, whatever Alice has queued"

        bob_done = asyncio.create_task(answer_result(bob))
        finished: list[int] = []
        positions: list[int] = []
        bob_after: int | None = None  # how many of Alice's jobs had finished when Bob's result was in
        while len(finished) < 51:
            frame = json.loads(await asyncio.wait_for(alice.recv(), 60))
            if frame["type"] == "result":
                finished.append(frame["result"]["n"])
                if bob_done.done() and bob_after is None:
                    bob_after = len(finished) - 1
                if len(finished) % 10 == 1 and len(finished) < 50:
                    await alice.send(json.dumps({"op": "status", "job": backlog[-1], "ref": "where"}))
            elif frame.get("ref") == "where" and frame["state"] == "queued":
                positions.append(frame["position"])
                assert isinstance(frame["eta_ms"], int), "the kind has run jobs: it can tell"
        await bob_done
        assert finished == [-1, *range(50)], "Alice's own jobs keep their order"
        assert bob_after == 1, "Bob's job started right after the one that held the slot"
        assert len(positions) >= 3 and positions == sorted(positions, reverse=True) and len(set(positions)) == len(
            positions), positions
        await alice.close()
        await bob.close()

    async def answer_result(ws: Any) -> dict[str, Any]:
        while (frame := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "result":
            pass
        return frame

    run(scenario())


def test_beside_a_heavy_tenant_a_light_one_finds_a_free_slot(one_slot: ServerThread) -> None:
    """Four slots; Alice's long jobs could fill them all, but while Bob uses the kind the last one is his."""
    pool = one_slot.app.state.services.dispatcher.pools["echo"]

    async def scenario() -> None:
        alice, bob = await connect(one_slot, A), await connect(one_slot, B)
        await bob.send(json.dumps({"op": "submit", "kind": "echo", "args": {"who": "bob"}, "ref": "b0"}))
        await answer(bob, "b0")  # Bob uses the kind
        for n in range(8):
            await alice.send(json.dumps({"op": "submit", "kind": "echo", "args": {"n": n, "delay_ms": 2000},
                                         "ref": f"a{n}"}))
            await answer(alice, f"a{n}")
        await bob.send(json.dumps({"op": "submit", "kind": "echo", "args": {"who": "bob"}, "ref": "b1"}))
        accepted = await answer(bob, "b1")
        first = json.loads(await asyncio.wait_for(asyncio.shield(_any_result(alice, bob)), 30))
        assert first["job"] == accepted["job"], "Bob's job ran at once: it did not wait for one of Alice's"
        await alice.close()
        await bob.close()

    pool.capacity = 4
    try:
        run(scenario())
    finally:
        pool.capacity = 1


async def _any_result(*sockets: Any) -> str:
    """The first `result` frame any of the sockets receives (raw)."""
    async def first(ws: Any) -> str:
        while True:
            raw = await ws.recv()
            if json.loads(raw)["type"] == "result":
                return str(raw)

    tasks = [asyncio.create_task(first(ws)) for ws in sockets]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return next(iter(done)).result()
