"""What a job kind is made of, and the one exception a worker raises to fail a job."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol, TypeVar

import jsonschema
from jsonschema.exceptions import ValidationError, best_match


@dataclass(frozen=True)
class WorkerConfig:
    """The part of the server's settings that workers need; plain data, so it pickles to any node. A kind's own
    settings travel in `kind_settings` (one object per kind that declares them): this class does not grow per kind."""

    euro_url: str = "https://www.euro-millions.com/results/"
    allow_private_urls: bool = False
    max_audio_bytes: int = 100 * 1024 * 1024
    fetch_timeout: float = 30.0  # a whole download, by the wall clock
    kind_settings: tuple[Any, ...] = ()

    def settings_of(self, cls: type[S]) -> S:
        """This kind's settings object (`cls`, a kind's `settings`), as the server read them; the defaults if none."""
        return next((found for found in self.kind_settings if isinstance(found, cls)), None) or cls()


S = TypeVar("S")


def setting(default: Any, env: str, help: str, check: Callable[[Any], bool] | None = None, must: str = "") -> Any:
    """A field of a kind's settings dataclass: its default, its variable (AMI_<KIND>_...), its help for `--help`,
    and what a value must be (`check`, and `must` to say so) for the server to start."""
    return field(default=default, metadata={"env": env, "help": help, "check": check, "must": must})


class JobErrorCode(StrEnum):
    """Codes in a failed job's `result.error.code` (protocol v1)."""

    INVALID_ARGS = "invalid_args"
    FETCH_FAILED = "fetch_failed"
    FORBIDDEN_URL = "forbidden_url"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    NOT_AUDIO = "not_audio"
    UNSUPPORTED_FORMAT = "unsupported_format"
    NOT_FOUND = "not_found"
    PARSE_FAILED = "parse_failed"
    WORKER_LOST = "worker_lost"
    INTERNAL = "internal"


def job_error(code: JobErrorCode, message: str) -> dict[str, str]:
    """A failed job's `error`, as its result carries it: the one place that shape is written."""
    return {"code": str(code), "message": message}


class JobFailed(Exception):
    """A job ended in failure for a reason the user can act on."""

    def __init__(self, code: JobErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def error(self) -> dict[str, str]:
        return job_error(self.code, self.message)


class InvalidArgs(JobFailed):
    """The arguments of a submission cannot be used; raised by a kind's `validate`."""

    def __init__(self, message: str) -> None:
        super().__init__(JobErrorCode.INVALID_ARGS, message)


class Worker(Protocol):
    def __init__(self, config: WorkerConfig) -> None: ...

    def run(self, args: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class BatchSpec:
    """A kind whose actor takes several queued jobs in one call: at most `max_size`, gathered for at most
    `max_wait_ms` while its actors are busy (an idle pool sends a lone job at once; 0: what one turn of the server's
    event loop read). The worker's `run_batch(list of args)`, if it has one, runs them; else its `run`, for each."""

    max_size: int = 64
    max_wait_ms: float = 0.0


@dataclass(frozen=True)
class PoolSpec:
    """How many actors serve a kind, and how much each takes of a node (Ray's `num_cpus`, `num_gpus`, `memory` in
    bytes, and custom `resources`): an actor starts only on a node that has them all."""

    size: int = 1
    num_cpus: float | None = None  # None: the server's AMI_ACTOR_CPUS
    max_concurrency: int = 4
    num_gpus: float = 0
    memory: int | None = None  # bytes Ray reserves for each actor on its node
    resources: tuple[tuple[str, float], ...] = ()  # custom Ray resources, e.g. (("tpu", 1),)

    def needs(self) -> dict[str, float]:
        """What each actor asks of a node beyond CPUs, by Ray's resource names."""
        wanted = dict(self.resources)
        if self.num_gpus:
            wanted["GPU"] = self.num_gpus
        if self.memory:
            wanted["memory"] = float(self.memory)
        return wanted


def describe(error: ValidationError) -> str:
    """A schema error in words a user can act on (the field, and what it must be)."""
    where = "args" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "required":
        missing = error.message.split("'")[1] if error.message.count("'") >= 2 else "a field"
        return f"{where}.{missing} is required"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(schema.get("properties", {}))) if isinstance(error.instance,
                                                                                            dict) else []
        return f"unknown args: {', '.join(map(str, extra))}"
    if error.validator == "type":
        return f"{where} must be of type {error.validator_value}"
    if error.validator == "pattern":
        return f"{where} must be {schema.get('description') or 'of the form ' + str(error.validator_value)}"
    if error.validator == "maxLength":
        return f"{where} is longer than {error.validator_value} characters"
    return f"{where}: {error.message}"


@dataclass(frozen=True)
class JobKind:
    """Everything the server needs to know about one kind of job.

    `schema` is the single source of truth for the shape of the args (checked with jsonschema, and
    published by `kinds`). `validate` adds meaning only (a draw day, a URL the guard accepts): it
    receives args the schema accepted and returns the args the worker gets, or raises InvalidArgs;
    it runs in the server before a job exists, so it must be cheap and never touch the network.
    `worker` is a plain class: `Worker(config)` then `run(args)` (sync, run in a thread, or async);
    an optional `warmup()` runs once when the actor starts. A `run` that is a generator streams: each value it
    yields is pushed to the job's watchers as a `progress` frame, and what it returns is the job's result.
    `settings` is the kind's own settings dataclass (fields made with `setting`), read from its AMI_* variables.
    `shortcut` is the word that submits the kind in plain text, `ami` and `help` (`audio URL`), with the arg the
    rest of the line fills; `form` the fields of its form on the page.
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
    published: dict[str, Any] = field(default_factory=dict)  # more for `kinds` to tell clients (a calendar)
    settings: type | None = None
    batch: BatchSpec | None = None
    shortcut: tuple[str, str, str] | None = None  # (word, the arg it fills, what the line does, for `help`)
    form: dict[str, Any] = field(default_factory=dict)  # the page's: {"title", "button", "fields": [{"arg", "label",
    #                                                    "input": url|text|number|draw-date, "placeholder"}]}

    @property
    def streams(self) -> bool:
        """Whether the worker's `run` yields progress (a generator, sync or async)."""
        run = getattr(self.worker, "run", None)
        return inspect.isgeneratorfunction(run) or inspect.isasyncgenfunction(run)

    @cached_property
    def _validator(self) -> jsonschema.protocols.Validator:
        validator_class = jsonschema.validators.validator_for(self.schema)
        validator_class.check_schema(self.schema)
        return validator_class(self.schema)

    def check(self, args: Any) -> dict[str, Any]:
        """The args the worker gets: the schema's shape first, then the kind's meaning; else InvalidArgs."""
        error = best_match(self._validator.iter_errors(args))
        if error is not None:
            raise InvalidArgs(describe(error))
        return self.validate(args)
