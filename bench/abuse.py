"""Clients that misbehave, and what another client sees meanwhile: one socket flooding frames, slowloris sockets.

    python -m bench.abuse flood ws://127.0.0.1:8000/ws SECONDS    (the flooder, run in its own process)

The flooder runs in a child process so that it competes with the server for the CPUs as a real attacker on this
machine would, and not with the measuring client for one interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import websockets

from bench.loadgen import percentile

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@dataclass
class Latencies:
    """Another client's ping and echo round trips (ms) over one episode."""

    pings: list[float]
    echoes: list[float]

    def figures(self) -> dict[str, float]:
        return {"ping p50": percentile(self.pings, 0.5), "ping p99": percentile(self.pings, 0.99),
                "echo p50": percentile(self.echoes, 0.5), "echo p99": percentile(self.echoes, 0.99),
                "samples": float(len(self.pings))}


async def probe(url: str, seconds: float, local: str = "127.0.0.1") -> Latencies:
    """A well-behaved client for `seconds`: a ping, then an echo job to its result, then 10 ms of rest, again."""
    out = Latencies([], [])
    async with websockets.connect(url, local_addr=(local, 0), compression=None) as ws:
        ended = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < ended:
            started = time.perf_counter()
            await ws.send(json.dumps({"op": "ping", "ref": f"p{n}"}))
            while json.loads(await ws.recv()).get("ref") != f"p{n}":
                pass
            out.pings.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await ws.send(json.dumps({"op": "submit", "kind": "echo", "args": {"n": n}, "ref": f"e{n}"}))
            while (frame := json.loads(await ws.recv()))["type"] != "result":
                if frame.get("type") == "error":
                    raise RuntimeError(f"the probe's echo was refused: {frame}")
            out.echoes.append((time.perf_counter() - started) * 1000)
            n += 1
            await asyncio.sleep(0.01)
    return out


async def flood(url: str, seconds: float) -> dict[str, Any]:
    """One socket sending `submit` and `ping` frames as fast as it can, reading (and dropping) the answers;
    when the server closes it, it connects again and goes on. What it sent and how it was treated."""
    sent = refused = accepted = reconnects = 0
    codes: list[int] = []
    ended = time.perf_counter() + seconds
    submit = json.dumps({"op": "submit", "kind": "echo", "args": {"flood": True}})
    ping = json.dumps({"op": "ping"})
    while time.perf_counter() < ended:
        try:
            async with websockets.connect(url, local_addr=("127.0.0.9", 0), max_queue=None,
                                          compression=None) as ws:

                async def read() -> None:
                    nonlocal refused, accepted
                    with contextlib.suppress(websockets.ConnectionClosed):
                        async for raw in ws:
                            refused += '"rate_limited"' in raw
                            accepted += '"accepted"' in raw

                reader = asyncio.create_task(read())
                if not reconnects:
                    print("flooding", flush=True)  # the measuring side starts now
                with contextlib.suppress(websockets.ConnectionClosed):
                    while time.perf_counter() < ended:
                        await ws.send(submit if sent % 2 else ping)
                        sent += 1
                        if sent % 64 == 0:
                            await asyncio.sleep(0)  # let the reader drain
                if time.perf_counter() >= ended:
                    ws.transport.abort()  # at once: a closing handshake would wait behind the frames still queued
                await reader
                if time.perf_counter() < ended:  # the server closed it
                    codes.append(ws.close_code or 1006)
                    reconnects += 1
        except (OSError, websockets.InvalidHandshake):
            await asyncio.sleep(0.05)
    return {"frames": sent, "rate_limited": refused, "accepted": accepted, "reconnects": reconnects,
            "close codes": sorted(set(codes))}


def slowloris(host: str, port: int, count: int, sources: list[str], hold: float, every: float = 10.0
              ) -> dict[str, float]:
    """`count` sockets (spread over `sources`) sending a WebSocket upgrade one byte every `every` s: how many the
    server refused at once, and how many are still open `hold` s after they were opened."""
    sockets: list[socket.socket] = []
    for n in range(count):
        sock = socket.socket()
        sock.bind((sources[n % len(sources)], 0))
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            sock.connect((host, port))
            sock.sendall(UPGRADE[:1])
        except OSError:
            sock.close()
            continue
        sockets.append(sock)
    opened = time.monotonic()
    sent = 1
    while (left := opened + hold - time.monotonic()) > 0:
        time.sleep(min(every, left))  # the attacker's pace, not a synchronisation
        if time.monotonic() - opened >= sent * every:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(UPGRADE[sent:sent + 1])
            sent += 1
    ends = [_end(sock) for sock in sockets]
    for sock in sockets:
        sock.close()
    return {"sockets": float(count), "refused (429)": float(ends.count("429")),
            "timed out (408)": float(ends.count("408")), "left": float(ends.count("open")), "seconds": hold}


def _end(sock: socket.socket) -> str:
    """How the server ended this socket: "429" or "408" (the status it answered), "closed" without an answer, or
    "open" if it has not."""
    sock.settimeout(0)  # with a timeout, Python would wait for the socket to become readable first
    try:
        answer = sock.recv(64)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    return answer[9:12].decode(errors="replace") if answer.startswith(b"HTTP/1.1 ") else "closed"


async def connect_times(url: str, seconds: float, local: str) -> list[float]:
    """A normal client connecting, pinging and leaving, again and again for `seconds`: ms to the first pong."""
    times: list[float] = []
    ended = time.perf_counter() + seconds
    while time.perf_counter() < ended:
        started = time.perf_counter()
        try:
            async with websockets.connect(url, local_addr=(local, 0), compression=None, open_timeout=30) as ws:
                await ws.send("ping")
                await ws.recv()
            times.append((time.perf_counter() - started) * 1000)
        except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed, TimeoutError):
            times.append(float("inf"))
        await asyncio.sleep(0.1)
    return times


async def slowloris_episode(url: str, count: int, sources: list[str], hold: float
                            ) -> tuple[dict[str, float], list[float]]:
    """`slowloris` against the server at `url` while a normal client from 127.0.0.2 connects again and again."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    attack = asyncio.create_task(asyncio.to_thread(slowloris, host, port, count, sources, hold))
    times = await connect_times(url, hold, "127.0.0.2")
    return await attack, times


def main() -> None:
    if sys.argv[1:2] != ["flood"] or len(sys.argv) != 4:
        raise SystemExit(__doc__)
    print(json.dumps(asyncio.run(flood(sys.argv[2], float(sys.argv[3])))), flush=True)


if __name__ == "__main__":
    main()
