"""`ami`: jobs from a shell, one JSON line per answer.

Exit status: 0 when every job succeeded, 1 when any failed or was refused, 2 on a usage or connection error
(or when --timeout ran out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ami.client import Client, ConnectionFailed, Progress, Refused, Result

USAGE_ERROR, FAILED, OK = 2, 1, 0
VERBS = ("submit", "watch", "status", "kinds")

EPILOG = """commands:
  WORD ARG               a kind's shortcut, as the server names them (`ami kinds`): euro DATE, audio URL,
                         speech URL...
  submit KIND JSON       a job of any kind, its args as a JSON object
  watch ID [ID ...]      the results of jobs submitted elsewhere
  status ID [ID ...]     the state of jobs
  kinds                  the server's kinds, their shortcuts and args
  -                      commands like the above from standard input, one a line

examples:
  ami euro 2024-03-26
  ami --url ws://inference.example:8000/ws --token "$TOKEN" audio https://example.com/a.wav
  printf 'euro 2024-03-26\\naudio https://example.com/a.wav\\n' | ami -
  ami --progress speech https://example.com/talk.mp3

While a job of a streaming kind runs, a terminal shows its progress on stderr; --progress prints each `progress`
frame as a JSON line too.
"""


class UsageError(Exception):
    pass


def parse_command(words: Sequence[str]) -> tuple[str, list[Any]]:
    """A command as (verb, arguments): ("submit", [kind, args]), ("watch", ids), ("status", ids), ("kinds", []) or
    ("shortcut", [word, arg]), which the server's kinds turn into a submit."""
    if not words:
        raise UsageError("no command given")
    verb, rest = words[0], list(words[1:])
    if verb == "kinds":
        return "kinds", []
    if verb not in VERBS:
        if len(rest) != 1:
            raise UsageError(f"usage: {verb} ARG (a kind's shortcut), or one of {', '.join(VERBS)}")
        return "shortcut", [verb, rest[0]]
    if verb == "submit":
        if len(rest) != 2:
            raise UsageError("usage: submit KIND JSON")
        try:
            args = json.loads(rest[1])
        except ValueError as exc:
            raise UsageError(f"the args are not JSON: {exc}") from None
        if not isinstance(args, dict):
            raise UsageError("the args must be a JSON object")
        return "submit", [rest[0], args]
    if not rest:
        raise UsageError(f"usage: {verb} ID [ID ...]")
    return verb, rest


def read_commands(stream: TextIO) -> list[tuple[str, list[Any]]]:
    commands = []
    for line in stream:
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(parse_command(shlex.split(line)))
    return commands


class ProgressLine:
    """A job's progress on one terminal line (stderr), rewritten in place, cleared once its result is in."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None

    def show(self, event: Progress) -> None:
        if self.stream is None:
            return
        data = event.data if isinstance(event.data, dict) else {}
        parts = [f"{event.kind} {event.job[:8]}: progress {event.seq}"]
        if isinstance(data.get("done_seconds"), int | float):
            parts.append(f"{data['done_seconds']:,.1f} s done")
        self.stream.write("\r\x1b[K" + ", ".join(parts))
        self.stream.flush()

    def clear(self) -> None:
        if self.stream is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


async def run(url: str, token: str | None, commands: list[tuple[str, list[Any]]], out: TextIO,
              progress: bool = False, terminal: TextIO | None = None) -> int:
    """Run the commands at once on one connection; print each answer as it comes; the exit status. `progress`:
    print `progress` frames too; `terminal`: where a progress line goes, if it is a terminal."""
    failed = False
    line = ProgressLine(terminal)

    def emit(frame: dict[str, Any]) -> None:
        out.write(json.dumps(frame, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()

    async def follow(client: Client, job: str) -> Result:
        async for event in client.events(job):
            if isinstance(event, Result):
                line.clear()
                return event
            line.show(event)
            if progress:
                emit(event.frame)
        raise AssertionError("events end with the result")

    async with Client(url, token) as client:
        shortcuts: dict[str, tuple[str, str]] = {}
        if any(verb == "shortcut" for verb, _ in commands):
            kinds = await client.kinds()
            shortcuts = {entry["shortcut"]["word"]: (entry["kind"], entry["shortcut"]["arg"]) for entry in kinds
                         if isinstance(entry.get("shortcut"), dict)}
            unknown = sorted({arguments[0] for verb, arguments in commands if verb == "shortcut"} - set(shortcuts))
            if unknown:
                raise UsageError(f"unknown command {unknown[0]!r}; this server's shortcuts are "
                                 f"{', '.join(sorted(shortcuts))} (and {', '.join(VERBS)})")

        async def one(verb: str, arguments: list[Any]) -> None:
            nonlocal failed
            try:
                if verb == "shortcut":
                    kind, arg = shortcuts[arguments[0]]
                    verb, arguments = "submit", [kind, {arg: arguments[1]}]
                if verb == "submit":
                    result = await follow(client, await client.send(arguments[0], arguments[1]))
                    failed |= not result.ok
                    emit(result.frame)
                elif verb == "kinds":
                    for entry in await client.kinds():
                        emit(entry)
                elif verb == "watch":
                    await client.watch(arguments)
                    for job, outcome in zip(arguments, await asyncio.gather(
                            *(follow(client, job) for job in arguments), return_exceptions=True), strict=True):
                        if isinstance(outcome, Refused):  # an id the server does not know
                            failed = True
                            emit({"type": "error", "code": outcome.code, "message": outcome.message, "job": job})
                        elif isinstance(outcome, BaseException):
                            raise outcome
                        else:
                            failed |= not outcome.ok
                            emit(outcome.frame)
                else:
                    for job in arguments:
                        frame = await client.status_frame(job)
                        emit({key: value for key, value in frame.items() if key != "ref"})
            except Refused as refused:
                failed = True
                emit({"type": "error", "code": refused.code, "message": refused.message})

        await asyncio.gather(*(one(verb, arguments) for verb, arguments in commands))
    return FAILED if failed else OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ami", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("AMI_URL", "ws://127.0.0.1:8000/ws"),
                        help="the server's socket (env AMI_URL; default ws://127.0.0.1:8000/ws)")
    parser.add_argument("--token", default=os.environ.get("AMI_TOKEN"),
                        help="a token, if the server asks (env AMI_TOKEN)")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 2)")
    parser.add_argument("--progress", action="store_true", help="print `progress` frames as JSON lines too")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="see below")
    options = parser.parse_args(argv)
    try:
        commands = read_commands(sys.stdin) if options.command == ["-"] else [parse_command(options.command)]
    except UsageError as exc:
        print(f"ami: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        return asyncio.run(asyncio.wait_for(run(options.url, options.token, commands, sys.stdout, options.progress,
                                                sys.stderr), options.timeout))
    except UsageError as exc:
        print(f"ami: {exc}", file=sys.stderr)
    except ConnectionFailed as exc:
        print(f"ami: {exc}", file=sys.stderr)
    except TimeoutError:
        print(f"ami: no answer within {options.timeout:g} s", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
