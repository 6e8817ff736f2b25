"""Tenants: who a job belongs to, what each may see, and the quotas that keep one from crowding out the others.

Each token of AMI_TOKENS (and AMI_OPERATOR_TOKENS) is a tenant: `name:secret` names it, a bare `secret` is named by
a short hash of itself (never the secret). Without tokens each client address is a tenant, for fairness and quotas
only: anyone may still read any job by its id. Address tenants are named `@address`, which no token name can be.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from dataclasses import dataclass

from server.buckets import refilled, wait_ms
from server.errors import TenantQuota
from server.jobs import Job

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ANONYMOUS = "anonymous"  # the metrics' label for every address tenant, so the label set stays bounded
BURST_SECONDS = 10.0  # the submission quota's burst: this many seconds' worth of AMI_TENANT_SUBMITS_PER_S
MAX_BUCKETS = 10_000  # idle tenants' buckets are forgotten past this many (a full bucket is the default anyway)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    operator: bool = False  # sees every tenant's jobs and the operator endpoints


def label(name: str) -> str:
    """A tenant's name as the metrics show it: named tenants by name, every address tenant as `anonymous`."""
    return name if name and not name.startswith("@") else ANONYMOUS


def parse_token(entry: str) -> tuple[str, str]:
    """(name, secret) of one AMI_TOKENS entry: `name:secret`, or a bare secret named by its hash."""
    name, colon, secret = entry.partition(":")
    if colon and NAME.match(name) and secret:
        return name, secret
    return "token-" + hashlib.sha256(entry.encode()).hexdigest()[:8], entry


@functools.lru_cache(maxsize=4096)  # one object for the many sockets of one address (an idle socket's bytes count)
def address_tenant(host: str | None) -> Tenant:
    return Tenant("@" + (host or "unknown"))


class Quotas:
    """Per tenant: unfinished jobs (AMI_TENANT_MAX_UNFINISHED) and submissions a second (AMI_TENANT_SUBMITS_PER_S,
    a token bucket with BURST_SECONDS' worth of burst)."""

    def __init__(self, max_unfinished: int, submits_per_s: float) -> None:
        self.max_unfinished = max_unfinished
        self.rate = submits_per_s
        self.unfinished: Counter[str] = Counter()
        self._counted: dict[str, str] = {}  # job id -> tenant, for the jobs counted in `unfinished`
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (submissions it may make now, when)

    def check(self, tenant: str, now: float) -> None:
        """Spend one submission of `tenant`'s budget, or raise TenantQuota saying when to try again."""
        if self.unfinished[tenant] >= self.max_unfinished:
            raise TenantQuota(f"you have {self.unfinished[tenant]} unfinished jobs, the most one tenant may have "
                              "(AMI_TENANT_MAX_UNFINISHED); wait for some results", 1000)
        burst = self.rate * BURST_SECONDS
        tokens, at = self._buckets.get(tenant, (burst, now))
        tokens = refilled(tokens, at, now, self.rate, burst)
        if tokens < 1.0:
            self._buckets[tenant] = (tokens, now)
            wait = wait_ms(tokens, self.rate)
            raise TenantQuota(f"more than {self.rate:g} submissions a second (AMI_TENANT_SUBMITS_PER_S); "
                              f"submit again in {wait} ms", wait)
        if len(self._buckets) >= MAX_BUCKETS and tenant not in self._buckets:
            self._forget_idle(now)
        self._buckets[tenant] = (tokens - 1.0, now)

    def _forget_idle(self, now: float) -> None:
        burst = self.rate * BURST_SECONDS
        self._buckets = {tenant: (tokens, at) for tenant, (tokens, at) in self._buckets.items()
                         if refilled(tokens, at, now, self.rate, burst) < burst}

    def count(self, job: Job) -> None:
        """A job of its tenant is unfinished from now (admitted, or resumed after a restart)."""
        if job.id not in self._counted:
            self._counted[job.id] = job.tenant
            self.unfinished[job.tenant] += 1

    def release(self, job: Job) -> None:
        """The job ended (or was withdrawn): it no longer counts against its tenant."""
        tenant = self._counted.pop(job.id, None)
        if tenant is not None:
            self.unfinished[tenant] -= 1
            if self.unfinished[tenant] <= 0:
                del self.unfinished[tenant]
