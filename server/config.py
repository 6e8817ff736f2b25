"""Settings: one typed object, read once from flags or environment variables, passed down."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from actors import JobKind, WorkerConfig, all_kinds

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _env(name: str, help: str, flag: str | None = None) -> dict[str, Any]:
    return {"env": name, "help": help, "flag": flag}


@dataclass(frozen=True)
class Settings:
    """Every option of the server with its default.

    Each field's metadata names its environment variable; the CLI flag is the field name with dashes.
    """

    host: str = field(default="127.0.0.1", metadata=_env("AMI_HOST", "interface to listen on"))
    port: int = field(default=8000, metadata=_env("AMI_PORT", "TCP port to listen on"))
    ray_address: str | None = field(
        default=None, metadata=_env("RAY_ADDRESS", "Ray cluster to join; unset: embedded local Ray")
    )
    ray_node_ip: str | None = field(
        default=None,
        metadata=_env("AMI_RAY_NODE_IP", "this machine's address in the Ray cluster, when it has several; unset: "
                                         "Ray's guess"),
    )
    data_dir: Path = field(default=Path("data"), metadata=_env("AMI_DATA_DIR", "where the job store lives"))
    store: str = field(default="sqlite", metadata=_env("AMI_STORE", "job store: sqlite, memory (no persistence) or redis://host:port/db"))
    euro_url: str = field(
        default="https://www.euro-millions.com/results/",
        metadata=_env("AMI_EURO_URL", "results page prefix; the date is appended as DD-MM-YYYY"),
    )
    allow_private_urls: bool = field(
        default=False,
        metadata=_env("AMI_ALLOW_PRIVATE_URLS", "allow user URLs that resolve to loopback/private addresses"),
    )
    enable_echo: bool = field(default=False, metadata=_env("AMI_ENABLE_ECHO", "enable the echo kind"))
    pools: tuple[tuple[Any, ...], ...] = field(
        default=(),
        metadata=_env("AMI_POOLS", "actor pools: 'kind=N' (fixed) or 'kind=MIN..MAX' (autoscaled), comma-separated, "
                                   "e.g. 'audio.length=1..4,euro.results=1'", flag="pools"),
    )
    pool_target_per_actor: int | None = field(
        default=None,
        metadata=_env("AMI_POOL_TARGET_PER_ACTOR", "unfinished jobs per actor an autoscaled pool aims at; unset: "
                                                   "the kind's concurrency"),
    )
    pool_upscale_delay_s: float = field(
        default=2.0, metadata=_env("AMI_POOL_UPSCALE_DELAY_S", "seconds over target before a pool grows"),
    )
    pool_downscale_delay_s: float = field(
        default=60.0, metadata=_env("AMI_POOL_DOWNSCALE_DELAY_S", "seconds under target before a pool shrinks by one"),
    )
    tokens: tuple[str, ...] = field(
        default=(), metadata=_env("AMI_TOKENS", "comma-separated tokens clients must present, each a tenant: "
                                                "'name:secret' or a bare secret; unset: no tokens")
    )
    operator_tokens: tuple[str, ...] = field(
        default=(), metadata=_env("AMI_OPERATOR_TOKENS", "tokens (same form) that see every tenant's jobs and the "
                                                         "operator endpoints; set: other tokens get 403 there")
    )
    tenant_max_unfinished: int = field(
        default=1000, metadata=_env("AMI_TENANT_MAX_UNFINISHED", "unfinished jobs one tenant may have; more get "
                                                                 "'rate_limited'")
    )
    tenant_submits_per_s: float = field(
        default=100.0, metadata=_env("AMI_TENANT_SUBMITS_PER_S", "submissions a second one tenant may make (a burst "
                                                                 "of 10 s worth); more get 'rate_limited'")
    )
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_env("AMI_ALLOWED_HOSTS", "Host names clients may use besides the defaults (loopback names when "
                                           "bound to loopback, else the bind address), or '*'"),
    )
    old_api_started: bool = field(
        default=False,
        metadata=_env("AMI_OLD_API_STARTED", "the old GET /task says STARTED for running tasks (Celery's "
                                             "track_started); off: PENDING until finished, as old clients saw"),
    )
    lease_ttl: float = field(
        default=15.0,
        metadata=_env("AMI_LEASE_TTL", "seconds a server's Redis lease lasts; others adopt its jobs once it ran out"),
    )
    auth_timeout: float = field(
        default=5.0, metadata=_env("AMI_AUTH_TIMEOUT", "seconds a socket without a token has to send 'auth'")
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=_env("AMI_ALLOWED_ORIGINS", "browser origins allowed besides the server's own, or '*'"),
    )
    header_timeout: float = field(
        default=10.0,
        metadata=_env("AMI_HEADER_TIMEOUT", "seconds from the TCP accept for a request's line, headers and body "
                                            "(a WebSocket upgrade included); slower connections are closed"),
    )
    max_connections_per_ip: int = field(
        default=1000,
        metadata=_env("AMI_MAX_CONNECTIONS_PER_IP", "open connections one client address may hold (counted from "
                                                    "the accept); the next is refused"),
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=_env("AMI_TRUSTED_PROXIES", "proxy addresses or networks whose X-Forwarded-For names the client "
                                             "(uvicorn's forwarded_allow_ips), comma-separated, or '*'; unset: none"),
    )
    frames_per_s: float = field(
        default=200.0,
        metadata=_env("AMI_FRAMES_PER_S", "client frames per second one connection may send (a burst of 5 s worth); "
                                          "more get 'rate_limited'"),
    )
    actor_cpus: float = field(default=0.25, metadata=_env("AMI_ACTOR_CPUS", "Ray CPUs reserved per actor"))
    max_frame_bytes: int = field(
        default=64 * 1024, metadata=_env("AMI_MAX_FRAME_BYTES", "largest client frame or REST body accepted")
    )
    max_outbox_bytes: int = field(
        default=1024 * 1024,
        metadata=_env("AMI_MAX_OUTBOX_BYTES", "bytes a client may leave unread before it is cut off (close 4008)"),
    )
    ws_deflate: bool = field(
        default=False,
        metadata=_env("AMI_WS_DEFLATE", "offer permessage-deflate; doubles an idle socket's memory (33 to 66 KiB)"),
    )
    shutdown_timeout: float = field(
        default=10.0,
        metadata=_env("AMI_SHUTDOWN_TIMEOUT", "seconds open requests get to finish when the server stops"),
    )
    max_audio_bytes: int = field(
        default=100 * 1024 * 1024, metadata=_env("AMI_MAX_AUDIO_BYTES", "largest audio download")
    )
    fetch_timeout: float = field(
        default=30.0,
        metadata=_env("AMI_FETCH_TIMEOUT", "seconds one download may take by the wall clock, connect to last byte"),
    )
    job_timeout: float = field(default=300.0, metadata=_env("AMI_JOB_TIMEOUT", "seconds a job may run"))
    max_pending: int = field(
        default=10_000, metadata=_env("AMI_MAX_PENDING", "jobs waiting for an actor before 'busy'")
    )
    max_jobs_per_connection: int = field(
        default=5_000, metadata=_env("AMI_MAX_JOBS_PER_CONNECTION", "unfinished jobs one socket may hold")
    )
    max_finished_jobs: int = field(
        default=100_000, metadata=_env("AMI_MAX_FINISHED_JOBS", "finished jobs the memory store keeps")
    )
    result_ttl: float = field(default=48 * 3600.0, metadata=_env("AMI_RESULT_TTL", "seconds results are kept"))
    ray_num_cpus: int | None = field(
        default=None, metadata=_env("AMI_RAY_NUM_CPUS", "CPUs of the embedded Ray; unset: all")
    )
    object_store_mb: int = field(
        default=512, metadata=_env("AMI_OBJECT_STORE_MB", "object store of the embedded Ray, MiB")
    )
    dashboard: bool = field(default=True, metadata=_env("AMI_DASHBOARD", "start the embedded Ray dashboard"))
    dashboard_port: int = field(default=8265, metadata=_env("AMI_DASHBOARD_PORT", "embedded dashboard port"))
    ray_metrics_port: int = field(
        default=8266,
        metadata=_env("AMI_RAY_METRICS_PORT", "the embedded Ray's Prometheus metrics export port (127.0.0.1); "
                                              "taken by another program: a free one, printed at start"),
    )
    dashboard_url: str | None = field(
        default=None, metadata=_env("AMI_DASHBOARD_URL", "dashboard link shown to users when joining a cluster")
    )
    server_id: str = field(
        default="", metadata=_env("AMI_SERVER_ID", "this server's name in the job store; unset: host:port")
    )
    namespace: str = field(
        default="", metadata=_env("AMI_NAMESPACE", "Ray namespace of this server's actors; unset: ami-<server id>")
    )
    log_level: str = field(default="info", metadata=_env("AMI_LOG_LEVEL", "debug, info, warning or error"))
    batch: bool = field(default=True, metadata=_env("AMI_BATCH", "send a batching kind's queued jobs to an actor "
                                                                  "several at a time while its actors are busy"))
    # Each kind's own settings object (a kind's `settings` dataclass, read from its AMI_<KIND>_* variables).
    kind_settings: tuple[Any, ...] = field(default=(), metadata={"env": None})

    @property
    def identity(self) -> str:
        """This server's name in the job store: it resubmits the unfinished jobs saved under it."""
        return self.server_id or f"{socket.gethostname()}:{self.port}"

    @property
    def store_shown(self) -> str:
        """The store URL as printed (banner, errors): a password in it (redis://:secret@host) is never shown."""
        parts = urlsplit(self.store)
        if not parts.password:
            return self.store
        user = f"{parts.username}:" if parts.username else ":"
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))

    @property
    def ray_namespace(self) -> str:
        """Servers sharing a cluster each keep their actors (audio-0, ...) in a namespace of their own."""
        return self.namespace or "ami-" + re.sub(r"[^A-Za-z0-9_.-]", "-", self.identity)

    def pool_bounds(self, kind: str, default: int) -> tuple[int, int]:
        """(MIN, MAX) actors of a kind's pool: equal for a fixed pool."""
        for name, *size in self.pools:
            if name == kind:
                return (size[0], size[-1])
        return (default, default)

    def worker_config(self) -> WorkerConfig:
        return WorkerConfig(
            euro_url=self.euro_url,
            allow_private_urls=self.allow_private_urls,
            max_audio_bytes=self.max_audio_bytes,
            fetch_timeout=self.fetch_timeout,
            kind_settings=self.kind_settings,
        )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from flags, then `AMI_*` variables, then defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in _own_fields():
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw, f.metadata["env"])
        parsed = _parser().parse_args(argv)
        for f in _own_fields():
            raw = getattr(parsed, f.name)
            if raw is not None:
                values[f.name] = _convert(f, raw, "--" + f.name.replace("_", "-"))
        values["kind_settings"] = tuple(_kind_settings(kind, environ, parsed) for kind in all_kinds().values()
                                        if kind.settings is not None)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        checks = [
            (1 <= self.port <= 65535 or self.port == 0, "AMI_PORT", "must be a port number"),
            (self.max_frame_bytes >= 256, "AMI_MAX_FRAME_BYTES", "must be at least 256"),
            (self.max_outbox_bytes >= 4096, "AMI_MAX_OUTBOX_BYTES", "must be at least 4096"),
            (self.shutdown_timeout > 0, "AMI_SHUTDOWN_TIMEOUT", "must be positive"),
            (self.auth_timeout > 0, "AMI_AUTH_TIMEOUT", "must be positive"),
            (self.header_timeout > 0, "AMI_HEADER_TIMEOUT", "must be positive"),
            (self.max_connections_per_ip >= 1, "AMI_MAX_CONNECTIONS_PER_IP", "must be at least 1"),
            (self.frames_per_s > 0, "AMI_FRAMES_PER_S", "must be positive"),
            (self.tenant_max_unfinished >= 1, "AMI_TENANT_MAX_UNFINISHED", "must be at least 1"),
            (self.tenant_submits_per_s > 0, "AMI_TENANT_SUBMITS_PER_S", "must be positive"),
            (self.lease_ttl >= 0.5, "AMI_LEASE_TTL", "must be at least 0.5"),
            (self.pool_target_per_actor is None or self.pool_target_per_actor >= 1, "AMI_POOL_TARGET_PER_ACTOR",
             "must be at least 1"),
            (self.pool_upscale_delay_s >= 0 and self.pool_downscale_delay_s >= 0, "AMI_POOL_UPSCALE_DELAY_S",
             "and AMI_POOL_DOWNSCALE_DELAY_S must not be negative"),
            (self.max_audio_bytes >= 1024, "AMI_MAX_AUDIO_BYTES", "must be at least 1024"),
            (self.fetch_timeout > 0, "AMI_FETCH_TIMEOUT", "must be positive"),
            (self.job_timeout > 0, "AMI_JOB_TIMEOUT", "must be positive"),
            (0 < self.actor_cpus <= 64, "AMI_ACTOR_CPUS", "must be in (0, 64]"),
            (self.store in ("sqlite", "memory") or self.store.startswith(("redis://", "rediss://", "unix://")),
             "AMI_STORE", "must be 'sqlite', 'memory' or a redis:// URL"),
            (self.euro_url.startswith(("http://", "https://")), "AMI_EURO_URL", "must be an http(s) URL"),
            (self.log_level.lower() in LOG_LEVELS, "AMI_LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise SettingsError(f"{name} {why}")


def _own_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Settings) if f.metadata["env"] is not None]


def _kind_fields() -> list[dataclasses.Field[Any]]:
    return [f for kind in all_kinds().values() if kind.settings is not None for f in dataclasses.fields(kind.settings)]


def _flag(env: str) -> str:
    """A kind setting's flag: its variable without AMI_, in lower case with dashes (--speech-threshold)."""
    return "--" + env.removeprefix("AMI_").lower().replace("_", "-")


def _kind_settings(kind: JobKind, environ: Mapping[str, str], parsed: argparse.Namespace) -> Any:
    """A kind's settings object from its variables and flags, each value checked as the kind says it must be."""
    assert kind.settings is not None
    values: dict[str, Any] = {}
    for f in dataclasses.fields(kind.settings):
        env = f.metadata["env"]
        raw = getattr(parsed, env.lower(), None)
        if raw is not None:
            values[f.name] = _convert(f, raw, _flag(env))
        elif environ.get(env):
            values[f.name] = _convert(f, environ[env], env)
    found = kind.settings(**values)
    for f in dataclasses.fields(kind.settings):
        check = f.metadata.get("check")
        if check is not None and not check(getattr(found, f.name)):
            raise SettingsError(f"{f.metadata['env']} {f.metadata.get('must') or 'has a value that cannot be used'}")
    return found


def _convert(f: dataclasses.Field[Any], raw: Any, name: str) -> Any:
    kind = str(f.type)
    text = str(raw).strip()
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind in ("int", "int | None"):
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "Path":
            return Path(text)
        if kind == "tuple[str, ...]":
            return tuple(filter(None, (part.strip() for part in text.split(","))))
        if kind.startswith("tuple"):
            return _parse_pools(text)
        return text
    except ValueError:
        raise SettingsError(f"{name}: cannot use {text!r} ({f.metadata['help']})") from None


def _parse_pools(text: str) -> tuple[tuple[str, int, int], ...]:
    pools = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, size = item.partition("=")
        low, dots, high = size.partition("..")
        least, most = int(low), int(high if dots else low)
        if not kind or least < 0 or most < least:
            raise ValueError
        pools.append((kind.strip(), least, most))
    return tuple(pools)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description="async-ml-inference server")
    for f in _own_fields():
        flag = "--" + f.name.replace("_", "-")
        helptext = f"{f.metadata['help']} (env {f.metadata['env']})"
        if str(f.type) == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=helptext)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=helptext)
    kinds = parser.add_argument_group("job kinds' own settings")
    for f in _kind_fields():
        env = f.metadata["env"]
        kinds.add_argument(_flag(env), dest=env.lower(), default=None,
                           help=f"{f.metadata['help']} (env {env}, default {f.default})")
    return parser
