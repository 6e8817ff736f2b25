"""Wire protocol v1: client frames parsed into typed requests, server frames built in one place (here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from actors import all_kinds
from server.errors import ErrorCode, RequestError
from server.jobs import Job, JobState

MAX_REF = 128
MAX_WATCH = 1000
MAX_TOKEN = 1024

# Each kind's plain-text shortcut, from the kind itself: a new kind needs no edit here.
_KINDS = sorted(all_kinds().values(), key=lambda kind: kind.name)
SHORTCUTS = {kind.shortcut[0]: (kind.name, kind.shortcut[1]) for kind in _KINDS if kind.shortcut}
HELP = [
    *(f"{f'{word} <{arg}>':<28}{what}" for kind in _KINDS if kind.shortcut for word, arg, what in [kind.shortcut]),
    "cancel <job>                cancel a job",
    "status <job>                state of a job",
    "watch <job> [<job> ...]     results of jobs, now or when they finish",
    "kinds                       the job kinds and their args",
    "auth <token>                present a token (servers with tokens)",
    "ping                        pong",
    "done                        submit nothing more; close once every result is in",
    "help                        this text",
    'JSON works too: {"op":"submit","kind":"audio.length","args":{"url":"..."}}',
]

OPS = "submit, cancel, status, watch, kinds, ping, help, auth, done"


@dataclass(frozen=True, slots=True)
class Submit:
    kind: str
    args: dict[str, Any]
    ref: str | None = None
    priority: int = 5  # 0-9, 9 first, within the submitter's own lane of the kind's queue


@dataclass(frozen=True, slots=True)
class Cancel:
    job: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    job: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Watch:
    jobs: tuple[str, ...]
    ref: str | None = None
    seen: dict[str, int] | None = None  # job -> the last `progress` seq the client has: only later ones are sent


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Kinds:
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Help:
    ref: str | None = None


Request = Submit | Cancel | Status | Watch | Kinds | Ping | Help | Auth | Done


def parse_request(text: str) -> Request:
    """One client text frame (JSON object or plain-text command) as a typed request."""
    text = text.strip()
    if not text:
        raise RequestError(ErrorCode.BAD_REQUEST, "empty frame; send a JSON object or a command (try 'help')")
    if text[0] in "{[\"" or text[0].isdigit():
        return _parse_json(text)
    return _parse_command(text)


def load_json(text: str | bytes) -> Any:
    """JSON whose every string can be written as UTF-8, or RequestError.

    JSON may escape lone UTF-16 surrogates (`"\\ud800"`); Python keeps them in its strings, and they
    blow up much later, wherever the string is encoded (the store, the socket). Refuse them here.
    """
    try:
        value = json.loads(text, parse_constant=_non_finite, parse_float=_finite_float)
    except NonFinite as exc:
        raise RequestError(ErrorCode.BAD_JSON, f"{exc} is not a finite number; JSON numbers must be finite "
                                               "(no NaN, Infinity or values beyond 1.8e308)") from None
    except (ValueError, RecursionError) as exc:
        raise RequestError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    escaped = "\\u" in text if isinstance(text, str) else b"\\u" in text  # surrogates only come from escapes
    if escaped and (path := unencodable(value)) is not None:
        inside_args = path.startswith(("args.", "args[")) or path == "args"
        code = ErrorCode.INVALID_ARGS if inside_args else ErrorCode.BAD_REQUEST
        ref = value.get("ref") if isinstance(value, dict) and path != "ref" else None
        where = path[:100] or "the top"
        raise RequestError(code, f"the string at {where} is not valid Unicode (a lone surrogate "
                                 "escape such as \\ud800); send UTF-8 text",
                           ref if isinstance(ref, str) and unencodable(ref) is None else None)
    return value


class NonFinite(ValueError):
    """NaN, Infinity or a number too large for a double: Python's parser takes them, strict JSON has none."""


def _non_finite(token: str) -> float:
    raise NonFinite(token)


def _finite_float(token: str) -> float:
    number = float(token)
    if number - number != 0.0:  # inf - inf is nan; nan - nan is nan
        raise NonFinite(token[:40])
    return number


def encode(frame: dict[str, Any]) -> str:
    """A server frame as one line of strict JSON (never NaN or Infinity: strict parsers reject them)."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def unencodable(value: Any) -> str | None:
    """The path of the first string (or key) in `value` that UTF-8 cannot encode, or None.

    Iterative, as the JSON decoder allows nesting deeper than Python's recursion limit.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path
        elif isinstance(item, dict):
            for key, inner in item.items():
                inner_path = f"{path}.{key}" if path else str(key)
                if not _encodable(key):
                    return path or "a key"
                stack.append((inner, inner_path))
        elif isinstance(item, list):
            stack.extend((inner, f"{path}[{index}]") for index, inner in enumerate(item))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_json(text: str) -> Request:
    frame = load_json(text)
    if not isinstance(frame, dict):
        raise RequestError(ErrorCode.BAD_REQUEST, "a frame must be a JSON object with an 'op'")
    ref = frame.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise RequestError(ErrorCode.BAD_REQUEST, "'ref' must be a string")
    if ref is not None and len(ref) > MAX_REF:
        raise RequestError(ErrorCode.BAD_REQUEST, f"'ref' is longer than {MAX_REF} characters")
    op = frame.get("op")
    if not isinstance(op, str):
        raise RequestError(ErrorCode.BAD_REQUEST, f"missing 'op' ({OPS})", ref)
    if op == "submit":
        kind = frame.get("kind")
        if not isinstance(kind, str):
            raise RequestError(ErrorCode.BAD_REQUEST, "submit needs a 'kind' string", ref)
        args = frame.get("args", {})
        if not isinstance(args, dict):
            raise RequestError(ErrorCode.BAD_REQUEST, "'args' must be a JSON object", ref)
        return Submit(kind, args, ref, parse_priority(frame.get("priority", 5), ref))
    if op in ("cancel", "status"):
        job = frame.get("job")
        if not isinstance(job, str) or not job:
            raise RequestError(ErrorCode.BAD_REQUEST, f"{op} needs a 'job' id string", ref)
        return Cancel(job, ref) if op == "cancel" else Status(job, ref)
    if op == "watch":
        jobs = frame.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(job, str) for job in jobs):
            raise RequestError(ErrorCode.BAD_REQUEST, "watch needs 'jobs', a list of job id strings", ref)
        seen = frame.get("seen")
        if seen is not None and not (isinstance(seen, dict) and len(seen) <= MAX_WATCH and all(
                isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 for seq in seen.values())):
            raise RequestError(ErrorCode.BAD_REQUEST, "'seen' must map job ids to the last progress seq received", ref)
        return _watch(jobs, ref, seen)
    if op == "auth":
        token = frame.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            raise RequestError(ErrorCode.BAD_REQUEST, f"auth needs a 'token' string of at most {MAX_TOKEN} characters",
                               ref)
        return Auth(token, ref)
    if op == "done":
        return Done(ref)
    if op == "kinds":
        return Kinds(ref)
    if op == "ping":
        return Ping(ref)
    if op == "help":
        return Help(ref)
    raise RequestError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}; ops are {OPS}", ref)


def parse_priority(value: Any, ref: str | None = None) -> int:
    """A submission's `priority`: an integer 0-9 (default 5)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise RequestError(ErrorCode.BAD_REQUEST, "'priority' must be an integer from 0 to 9 (9 runs first)", ref)
    return value


def _parse_command(text: str) -> Request:
    word, *rest = text.split()
    word = word.lower()
    if word in SHORTCUTS:
        kind, field = SHORTCUTS[word]
        if len(rest) != 1:
            raise RequestError(ErrorCode.INVALID_ARGS, f"usage: {word} <{field}>")
        return Submit(kind, {field: rest[0]})
    if word in ("cancel", "status"):
        if len(rest) != 1:
            raise RequestError(ErrorCode.BAD_REQUEST, f"usage: {word} <job>")
        return Cancel(rest[0]) if word == "cancel" else Status(rest[0])
    if word == "watch":
        if not rest:
            raise RequestError(ErrorCode.BAD_REQUEST, "usage: watch <job> [<job> ...]")
        return _watch(rest, None)
    if word == "auth":
        if len(rest) != 1 or len(rest[0]) > MAX_TOKEN:
            raise RequestError(ErrorCode.BAD_REQUEST, "usage: auth <token>")
        return Auth(rest[0])
    if not rest and word == "done":
        return Done()
    if not rest and word == "kinds":
        return Kinds()
    if not rest and word == "ping":
        return Ping()
    if not rest and word == "help":
        return Help()
    raise RequestError(ErrorCode.UNKNOWN_OP, f"unknown command {word!r}; try 'help'")


def _watch(jobs: list[str], ref: str | None, seen: dict[str, int] | None = None) -> Watch:
    if len(jobs) > MAX_WATCH:
        raise RequestError(ErrorCode.TOO_LARGE, f"watch at most {MAX_WATCH} jobs per frame", ref)
    return Watch(tuple(dict.fromkeys(jobs)), ref, seen)  # each job's result at most once per frame


def error_frame(code: str, message: str, ref: str | None = None, job: str | None = None,
                retry_after_ms: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if job is not None:
        frame["job"] = job
    if retry_after_ms is not None:
        frame["retry_after_ms"] = retry_after_ms
    if ref is not None:
        frame["ref"] = ref
    return frame


def _with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame


Place = tuple[int, int | None] | None  # a queued job's position (jobs ahead) and eta_ms, or None if not queued


def _placed(frame: dict[str, Any], place: Place) -> dict[str, Any]:
    if place is not None:
        frame["position"], frame["eta_ms"] = place
    return frame


def accepted_frame(job: Job, ref: str | None, place: Place = None) -> dict[str, Any]:
    """`accepted`; with `position` and `eta_ms` when the job has to wait for an actor."""
    return _with_ref(_placed({"type": "accepted", "job": job.id, "kind": job.kind}, place), ref)


def result_frame(job: Job, ref: str | None = None) -> dict[str, Any]:
    """A finished job's `result`, carrying `ref` (a watch's or cancel's) or else the submission's own."""
    frame: dict[str, Any] = {"type": "result", "job": job.id, "kind": job.kind, "status": str(job.state)}
    ref = job.ref if ref is None else ref
    if ref is not None:
        frame["ref"] = ref
    if job.state is JobState.SUCCEEDED:
        frame["result"] = job.result
    elif job.error is not None:
        frame["error"] = job.error
    if job.finished_at is not None:
        frame["elapsed_ms"] = round((job.finished_at - job.created_at) * 1000, 3)
    if job.started_at is not None:  # it ran (a result reused from the cache never waited for an actor)
        frame["queued_ms"] = round(max(job.started_at - job.created_at, 0.0) * 1000, 3)
    return frame


def progress_frame(job: Job, seq: int, data: Any, ref: str | None = None) -> dict[str, Any]:
    """A running job's `progress` (kinds that stream): `seq` counts from 1, one per frame, for each job."""
    frame = {"type": "progress", "job": job.id, "kind": job.kind, "seq": seq, "data": data}
    ref = job.ref if ref is None else ref
    return frame if ref is None else {**frame, "ref": ref}


def status_frame(job: Job, ref: str | None = None, place: Place = None) -> dict[str, Any]:
    """`status`; a queued job's carries `position` (0: next) and `eta_ms` (null until the kind has run a job)."""
    state = job.visible_state
    frame = {"type": "status", "job": job.id, "kind": job.kind, "state": str(state)}
    return _with_ref(_placed(frame, place if state is JobState.QUEUED else None), ref)


def pong_frame(ref: str | None) -> dict[str, Any]:
    return _with_ref({"type": "pong"}, ref)


def help_frame(ref: str | None) -> dict[str, Any]:
    return _with_ref({"type": "help", "commands": HELP}, ref)


def authorized_frame(ref: str | None) -> dict[str, Any]:
    return _with_ref({"type": "authorized"}, ref)


def kinds_frame(kinds: list[dict[str, Any]], ref: str | None) -> dict[str, Any]:
    return _with_ref({"type": "kinds", "kinds": kinds}, ref)
