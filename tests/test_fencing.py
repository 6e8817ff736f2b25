"""Two servers on one Redis: one is frozen (SIGSTOP) past its lease with jobs running, the other adopts and runs
them, the frozen one wakes up. Each job's result is written once, by its new owner; the woken server's writes are
refused by the fencing token, and it cancels its own copies."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import redis
import websockets

from bench.servers import free_port
from tests.helpers import FixtureHTTP, ServerThread, run, settings_for, wait_until
from tests.processes import server_process

ECHO_ONLY = (("audio.length", 0), ("euro.results", 0), ("echo", 1))
JOBS = 10


def count_finishes(url: str, stop: threading.Event, counts: collections.Counter[str]) -> threading.Thread:
    """Count the `ami:finished` announcements per job: one per result write."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe("ami:finished")
    pubsub.get_message(timeout=5)  # the subscription's confirmation

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message.get("type") == "message":
                counts[message["data"].decode()] += 1
        pubsub.close()
        client.close()  # held until here: a collected client closes its pool's connections, the subscription's too

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    return thread


async def submit_all(url: str) -> list[str]:
    async with websockets.connect(url) as ws:
        for n in range(JOBS):
            await ws.send(json.dumps({"op": "submit", "kind": "echo", "args": {"n": n, "delay_ms": 4000}}))
        jobs: list[str] = []
        while len(jobs) < JOBS:
            frame = json.loads(await ws.recv())
            assert frame["type"] == "accepted", frame
            jobs.append(frame["job"])
        return jobs


def test_a_frozen_servers_jobs_are_written_once_by_their_adopter(
        ray_session: None, http: FixtureHTTP, redis_url: str, tmp_path: Path) -> None:
    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    port = free_port()
    a = server_process("--port", str(port), "--enable-echo", "--no-dashboard", "--store", redis_url,
                       "--server-id", "a", "--lease-ttl", "2", "--data-dir", str(tmp_path / "a"),
                       "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1", "--ray-num-cpus", "1",
                       "--object-store-mb", "100", "--log-level", "info")
    counts: collections.Counter[str] = collections.Counter()
    stop = threading.Event()
    listener = count_finishes(redis_url, stop, counts)
    b_settings = settings_for(http, tmp_path / "b", pools=ECHO_ONLY, store=redis_url, server_id="b", lease_ttl=2.0)
    frozen = False
    try:
        a.wait_for_line(lambda line: line.startswith("Socket:"))
        jobs = run(submit_all(f"ws://127.0.0.1:{port}/ws"))
        assert wait_until(lambda: all(json.loads(store.get(f"ami:job:{job}") or "{}").get("state") == "running"
                                      for job in jobs), 30), "A runs them"
        os.kill(a.popen.pid, signal.SIGSTOP)  # paused: its actors go on, its lease runs out
        frozen = True
        with ServerThread(b_settings):
            assert wait_until(lambda: store.scard("ami:unfinished:b") + sum(counts[job] for job in jobs) == JOBS
                              and all(store.get(f"ami:fence:{job}") == b"1" for job in jobs), 30), "B adopted them"
            os.kill(a.popen.pid, signal.SIGCONT)
            frozen = False
            assert wait_until(lambda: all(counts[job] >= 1 for job in jobs), 60), "B wrote every result"
            a.wait_for_line(lambda line: "belongs to another server now" in line, 30)
            assert wait_until(lambda: sum("belongs to another server now" in line for line in a.output) == JOBS, 30)
            final: dict[str, Any] = {job: json.loads(store.get(f"ami:job:{job}") or "{}") for job in jobs}
        assert all(record["state"] == "succeeded" for record in final.values()), final
        assert all(counts[job] == 1 for job in jobs), f"each result is written once: {dict(counts)}"
        assert store.scard("ami:unfinished:a") == 0 and store.scard("ami:unfinished:b") == 0
    finally:
        if frozen:
            os.kill(a.popen.pid, signal.SIGCONT)
        stop.set()
        listener.join(10)
        a.stop()
