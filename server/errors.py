"""Error and close codes of protocol v1, documented once here and in the README, and the exceptions
the inner layers raise, turned into wire errors in one place (`refusal`) at the edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum, StrEnum

from actors import InvalidArgs


class ErrorCode(StrEnum):
    """Codes of `error` frames: a client frame that created no job."""

    BAD_JSON = "bad_json"  # not JSON
    BAD_REQUEST = "bad_request"  # JSON, but not a request: not an object, a field of the wrong type, binary
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_KIND = "unknown_kind"
    INVALID_ARGS = "invalid_args"
    NOT_FOUND = "not_found"  # no job with that id
    BUSY = "busy"  # too many jobs waiting; try again later
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"  # frame larger than AMI_MAX_FRAME_BYTES
    UNAUTHORIZED = "unauthorized"
    INTERNAL = "internal"  # the server failed on this frame (a bug); the connection stays open


HTTP_STATUS = {  # REST answers to a refused request; any other code is 422
    ErrorCode.BAD_JSON: 422,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BUSY: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INTERNAL: 500,
}


def http_status(code: ErrorCode) -> int:
    return HTTP_STATUS.get(code, 422)


class CloseCode(IntEnum):
    """WebSocket close codes the server sends (4000-4999 are the application's), each with its one reason."""

    NORMAL = 1000  # `done`: every result pushed
    FORBIDDEN = 1008  # policy violation: a browser origin that is not allowed (sent as HTTP 403), too many sockets
    INTERNAL = 1011  # the server could not go on with this connection (a bug); reconnect and `watch`
    SERVICE_RESTART = 1012  # the server is stopping (uvicorn sends it at shutdown): reconnect later, then `watch`
    UNAUTHORIZED = 4001  # no valid token: send `auth` first, or connect with Authorization: Bearer
    TOO_SLOW = 4008  # the client left more than AMI_MAX_OUTBOX_BYTES unread; reconnect and `watch`
    FLOODING = 4029  # still over AMI_FRAMES_PER_S 5 s after the first `rate_limited`; reconnect slower, `watch`

    @property
    def reason(self) -> str:
        return CLOSE_REASONS[self]


CLOSE_REASONS = {
    CloseCode.NORMAL: "done: every result sent",
    CloseCode.FORBIDDEN: "too many open connections from your address; close some and try again",
    CloseCode.INTERNAL: "the server could not send a frame",
    CloseCode.SERVICE_RESTART: "the server is restarting; reconnect, then watch your jobs",
    CloseCode.UNAUTHORIZED: "a valid token is required",
    CloseCode.TOO_SLOW: "too many unread bytes; reconnect and watch your jobs",
    CloseCode.FLOODING: "too many frames after 'rate_limited'; wait retry_after_ms before sending again",
}


class RequestError(Exception):
    """A client frame that cannot be served; answered with an `error` frame (or an HTTP error)."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None, job: str | None = None,
                 loc: tuple[str, ...] = ("body",), retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.job = job
        self.loc = loc  # where in a REST body, as FastAPI's `detail` said it
        self.retry_after_ms = retry_after_ms  # rate_limited: when to try again


class Refused(Exception):
    """Admission said no: the inner layers' reasons, each mapped to a wire code in `refusal`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownKind(Refused):
    """No such kind, or not enabled on this server."""


class PoolFull(Refused):
    """Too many jobs of a kind wait for an actor (or no actor serves it here)."""


class ConnectionFull(Refused):
    """The submitting connection holds as many unfinished jobs as it may."""


class StoreUnavailable(Refused):
    """The job store could not save the job."""


class TenantQuota(Refused):
    """The submitting tenant is at one of its quotas (unfinished jobs, submissions a second)."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


REFUSALS: tuple[tuple[type[Exception], ErrorCode], ...] = (  # the first row the refusal is an instance of
    (UnknownKind, ErrorCode.UNKNOWN_KIND),
    (InvalidArgs, ErrorCode.INVALID_ARGS),
    (TenantQuota, ErrorCode.RATE_LIMITED),
    (Refused, ErrorCode.BUSY),  # PoolFull, ConnectionFull, StoreUnavailable, and any refusal not listed above
)


def refusal(exc: Refused | InvalidArgs, ref: str | None = None) -> RequestError:
    """The wire error for an inner layer's refusal: the one place where the two vocabularies meet. A new subclass
    of a listed exception maps as its parent does."""
    code = next(code for cls, code in REFUSALS if isinstance(exc, cls))
    return RequestError(code, exc.message, ref, retry_after_ms=getattr(exc, "retry_after_ms", None))


@contextmanager
def refusals_answered(ref: str | None = None, loc: tuple[str, ...] = ("body",)) -> Iterator[None]:
    """Inside the block, admission's refusals become the RequestError the edge (socket or REST) answers with."""
    try:
        yield
    except (Refused, InvalidArgs) as exc:
        refused = refusal(exc, ref)
        refused.loc = loc
        raise refused from None
