"""Error and close codes of protocol v1, documented once here and in the README."""

from __future__ import annotations

from enum import StrEnum


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


HTTP_STATUS = {  # REST answers to a refused request; any other code is 422
    ErrorCode.BAD_JSON: 422,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BUSY: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAUTHORIZED: 401,
}


class JobErrorCode(StrEnum):
    """Codes in a failed job's `result.error.code`."""

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


class CloseCode:
    """WebSocket close codes the server uses (4000-4999 are the application's)."""

    NORMAL = 1000
    FORBIDDEN = 1008  # policy violation: a browser origin that is not allowed (sent as HTTP 403)
    INTERNAL = 1011  # the server could not go on with this connection (a bug); reconnect and `watch`
    GOING_AWAY = 1001  # server shutting down: reconnect elsewhere or later, then `watch`
    UNAUTHORIZED = 4001  # no valid token (AMI_TOKENS): connect again with ?token=... or Authorization: Bearer
    TOO_SLOW = 4008  # the client left more than AMI_MAX_OUTBOX_BYTES unread; reconnect and `watch` to get the results


class RequestError(Exception):
    """A client frame that cannot be served; answered with an `error` frame."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None, job: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.job = job
