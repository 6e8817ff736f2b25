"""Clients that submit, drop the socket at random moments, reconnect and watch: no result lost or doubled."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from websockets.exceptions import ConnectionClosed

from tests.helpers import Client, ServerThread, run

CLIENTS = 4
ROUNDS = 6


async def one_client(server: ServerThread, seed: int, accepted: set[str]) -> list[Counter[str]]:
    """Rounds of: reconnect, watch what is still owed, submit, read a while, drop. Result counts per connection."""
    rng = random.Random(seed)
    owed: set[str] = set()
    connections: list[Counter[str]] = []
    for round_ in range(ROUNDS):
        client = await Client.connect(server.ws_url)
        seen: Counter[str] = Counter()
        connections.append(seen)
        refs: dict[str, int] = {}
        try:
            coming = len(owed)  # frames this connection is owed: one result per watched job ...
            if owed:
                await client.send({"op": "watch", "jobs": sorted(owed)})
            for n in range(rng.randint(3, 15)):
                coming += 2  # ... and an accepted and a result per submission
                ref = f"{seed}-{round_}-{n}"
                refs[ref] = n
                args = {"ref": ref, "delay_ms": rng.randint(0, 150)}
                await client.send({"op": "submit", "kind": "echo", "args": args, "ref": ref})
            for _ in range(rng.randint(0, coming)):  # then drop at a random moment
                frame = await client.recv(timeout=30)
                _note(frame, seen, owed, accepted)
        finally:
            if rng.random() < 0.5:
                client.ws.transport.abort()  # dropped, not closed
            await client.close()
    return connections


def _note(frame: dict[str, Any], seen: Counter[str], owed: set[str], accepted: set[str]) -> None:
    if frame["type"] == "accepted":
        accepted.add(frame["job"])
        owed.add(frame["job"])
    elif frame["type"] == "result":
        assert frame["status"] == "succeeded", frame
        seen[frame["job"]] += 1
        owed.discard(frame["job"])


def test_drops_and_reconnects_lose_and_double_nothing(server: ServerThread) -> None:
    accepted: set[str] = set()

    async def scenario() -> tuple[list[Counter[str]], Counter[str]]:
        results = await asyncio.gather(*(one_client(server, seed, accepted) for seed in range(CLIENTS)))
        connections = [seen for per_client in results for seen in per_client]
        final: Counter[str] = Counter()
        async with await Client.connect(server.ws_url) as client:
            await client.send({"op": "watch", "jobs": sorted(accepted)})
            while len(final) < len(accepted):
                frame = await client.recv(timeout=30)
                assert frame["type"] == "result", frame
                final[frame["job"]] += 1
            await client.send("ping")
            try:
                assert (await client.recv())["type"] == "pong", "no result came twice"
            except ConnectionClosed as exc:
                raise AssertionError("the connection closed") from exc
        return connections, final

    connections, final = run(scenario(), timeout=120)
    assert len(accepted) > 20
    for seen in connections:
        assert all(count == 1 for count in seen.values()), "a connection got a result twice"
    assert set(final) == accepted and all(count == 1 for count in final.values())
