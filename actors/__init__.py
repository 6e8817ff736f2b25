"""Job kinds: one module each, found by looking for a module-level `KIND` in this package."""

from __future__ import annotations

import importlib
import pkgutil

from actors._base import InvalidArgs, JobErrorCode, JobFailed, JobKind, PoolSpec, Worker, WorkerConfig, job_error

__all__ = ["InvalidArgs", "JobErrorCode", "JobFailed", "JobKind", "PoolSpec", "Worker", "WorkerConfig", "all_kinds",
           "job_error"]


def all_kinds() -> dict[str, JobKind]:
    """Every kind defined in this package, by name."""
    kinds: dict[str, JobKind] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, JobKind):
            kinds[kind.name] = kind
    return kinds
