"""Shared fixtures: one Ray for the session, one HTTP fixture server, one app server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import ray

from bench.servers import keep_ray_on_loopback
from tests.helpers import FixtureHTTP, ServerThread, settings_for

MiB = 1024 * 1024
keep_ray_on_loopback()  # for the servers and clusters the tests start; the session Ray is given 127.0.0.1 below


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One real Ray for every in-process test, sized for a 2-CPU machine, stopped at the end."""
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, object_store_memory=128 * MiB,
             include_dashboard=False,
             namespace="ami-tests", log_to_driver=bool(os.environ.get("AMI_TEST_RAY_LOGS")))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def http() -> Iterator[FixtureHTTP]:
    with FixtureHTTP() as server:
        yield server


@pytest.fixture(scope="session")
def server(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The app with every kind, echo included, on real uvicorn; actors warmed up before the first test."""
    with ServerThread(settings_for(http, tmp_path_factory.mktemp("data"))) as running:
        running.wait_ready()
        yield running


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from bench.servers import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
