"""What a job kind is made of, and the one exception a worker raises to fail a job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class WorkerConfig:
    """The part of the server's settings that workers need; plain data, so it pickles to any node."""

    euro_url: str = "https://www.euro-millions.com/results/"
    allow_private_urls: bool = False
    max_audio_bytes: int = 100 * 1024 * 1024
    fetch_timeout: float = 30.0  # a whole download, by the wall clock


class JobFailed(Exception):
    """A job ended in failure for a reason the user can act on; `code` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidArgs(JobFailed):
    """The arguments of a submission cannot be used; raised by a kind's `validate`."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_args", message)


class Worker(Protocol):
    def __init__(self, config: WorkerConfig) -> None: ...

    def run(self, args: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class PoolSpec:
    """How many actors serve a kind, and how much each takes of a node."""

    size: int = 1
    num_cpus: float | None = None  # None: the server's AMI_ACTOR_CPUS
    max_concurrency: int = 4


@dataclass(frozen=True)
class JobKind:
    """Everything the server needs to know about one kind of job.

    `validate` turns raw args into the args the worker gets, or raises InvalidArgs; it runs in the
    server before a job exists, so it must be cheap and never touch the network.
    `worker` is a plain class: `Worker(config)` then `run(args)` (sync, run in a thread, or async);
    an optional `warmup()` runs once when the actor starts.
    """

    name: str
    actor_name: str
    description: str
    schema: dict[str, Any]
    validate: Callable[[dict[str, Any]], dict[str, Any]]
    worker: type
    pool: PoolSpec = field(default_factory=PoolSpec)
    optional: bool = False  # off unless enabled by the operator (the echo kind)
    cacheable: bool = False  # a success never changes for the same args: the job store keeps it for reuse
    example: dict[str, Any] = field(default_factory=dict)
