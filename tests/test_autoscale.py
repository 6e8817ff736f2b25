"""Autoscaled pools on real Ray: they grow with the queue, shrink when idle, never below their minimum, never
killing an actor that runs a job, and an actor gone for good is replaced."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ray
import requests

from tests.helpers import Client, FixtureHTTP, ServerThread, run, settings_for, wait_until


@pytest.fixture(scope="module")
def scaled(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("scaled"), actor_cpus=0.05,
                            pools=(("audio.length", 0), ("euro.results", 0), ("echo", 1, 3)),
                            pool_target_per_actor=2, pool_upscale_delay_s=0.2, pool_downscale_delay_s=0.5)
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running


def echo_pool(server: ServerThread) -> dict[str, Any]:
    pools = requests.get(f"{server.url}/pools", timeout=30).json()["pools"]
    pool: dict[str, Any] = next(pool for pool in pools if pool["kind"] == "echo")
    return pool


def test_a_pool_grows_with_its_queue_and_shrinks_when_idle(scaled: ServerThread) -> None:
    assert echo_pool(scaled)["bounds"] == {"min": 1, "max": 3} and len(echo_pool(scaled)["actors"]) == 1
    seen: list[int] = []

    async def scenario() -> list[dict[str, Any]]:
        async with await Client.connect(scaled.ws_url) as client:
            jobs = [await client.submit("echo", {"n": n, "delay_ms": 2500}) for n in range(8)]
            def at_most() -> bool:
                seen.append(len(echo_pool(scaled)["actors"]))
                return seen[-1] == 3

            grown = wait_until(at_most, 30)
            assert grown, f"the pool grew to its maximum (8 jobs, 2 per actor): {seen[-5:]}"
            assert echo_pool(scaled)["target"] == 3
            return [await client.result(job, timeout=60) for job in jobs]

    results = run(scenario(), timeout=120)
    assert all(result["status"] == "succeeded" for result in results), "no job lost to a shrinking pool"
    assert wait_until(lambda: len(echo_pool(scaled)["actors"]) == 1, 30), "back to its minimum when idle"
    assert echo_pool(scaled)["target"] == 1


def test_an_actor_gone_for_good_is_replaced(scaled: ServerThread) -> None:
    [actor] = echo_pool(scaled)["actors"]
    ray.kill(ray.get_actor(actor["name"], namespace=scaled.settings.ray_namespace), no_restart=True)

    async def scenario() -> dict[str, Any]:
        async with await Client.connect(scaled.ws_url) as client:
            return await client.result(await client.submit("echo", {"after": "a death"}), timeout=60)

    assert run(scenario(), timeout=90)["result"] == {"after": "a death"}
    assert wait_until(lambda: [a["name"] for a in echo_pool(scaled)["actors"]] not in ([], [actor["name"]]), 30)
    assert len(echo_pool(scaled)["actors"]) == 1, "healed to its minimum"


def test_an_idle_actor_gone_for_good_is_replaced_before_any_job_meets_it(scaled: ServerThread) -> None:
    """No job runs on it: the periodic probe finds the death, and the pool heals to its minimum."""
    assert wait_until(lambda: [a["node_id"] is not None for a in echo_pool(scaled)["actors"]] == [True], 30)
    [actor] = echo_pool(scaled)["actors"]
    ray.kill(ray.get_actor(actor["name"], namespace=scaled.settings.ray_namespace), no_restart=True)

    def replaced() -> bool:
        actors = echo_pool(scaled)["actors"]
        return len(actors) == 1 and actors[0]["name"] != actor["name"] and actors[0]["node_id"] is not None
    assert wait_until(replaced, 60), echo_pool(scaled)
    assert requests.get(f"{scaled.url}/readyz", timeout=30).status_code == 200
