"""Job kinds: one module each, found by looking for a module-level `KIND` in this package."""

from __future__ import annotations

import importlib
import pkgutil

from actors._base import (
    BatchSpec,
    InvalidArgs,
    JobErrorCode,
    JobFailed,
    JobKind,
    PoolSpec,
    Worker,
    WorkerConfig,
    job_error,
    setting,
)

__all__ = ["BatchSpec", "InvalidArgs", "JobErrorCode", "JobFailed", "JobKind", "PoolSpec", "Worker", "WorkerConfig",
           "all_kinds", "job_error", "load_kind", "setting"]


def all_kinds() -> dict[str, JobKind]:
    """Every kind defined in this package, by name (each kind module imports no heavy library at its top: its
    worker does, in the actor)."""
    kinds: dict[str, JobKind] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if not module_info.name.startswith("_") and (kind := load_kind(f"{__name__}.{module_info.name}")):
            kinds[kind.name] = kind
    return kinds


def load_kind(module_name: str) -> JobKind | None:
    """The kind a module defines (its module-level `KIND`), importing that module only: how an actor finds its own."""
    kind = getattr(importlib.import_module(module_name), "KIND", None)
    return kind if isinstance(kind, JobKind) else None
