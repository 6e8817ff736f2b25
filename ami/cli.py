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

from ami.client import Client, ConnectionFailed, Refused

SHORTCUTS = {"euro": ("euro.results", "date"), "audio": ("audio.length", "url")}
USAGE_ERROR, FAILED, OK = 2, 1, 0

EPILOG = """commands:
  euro DATE              the EuroMillions draw of DATE (YYYY-MM-DD or DD-MM-YYYY)
  audio URL              the length of the audio at URL
  submit KIND JSON       a job of any kind, its args as a JSON object
  watch ID [ID ...]      the results of jobs submitted elsewhere
  status ID [ID ...]     the state of jobs
  -                      commands like the above from standard input, one a line

examples:
  ami euro 2024-03-26
  ami --url ws://inference.example:8000/ws --token "$TOKEN" audio https://example.com/a.wav
  printf 'euro 2024-03-26\\naudio https://example.com/a.wav\\n' | ami -
"""


class UsageError(Exception):
    pass


def parse_command(words: Sequence[str]) -> tuple[str, list[Any]]:
    """A command as (verb, arguments): ("submit", [kind, args]), ("watch", ids) or ("status", ids)."""
    if not words:
        raise UsageError("no command given")
    verb, rest = words[0], list(words[1:])
    if verb in SHORTCUTS:
        if len(rest) != 1:
            raise UsageError(f"usage: {verb} {SHORTCUTS[verb][1].upper()}")
        kind, field = SHORTCUTS[verb]
        return "submit", [kind, {field: rest[0]}]
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
    if verb in ("watch", "status"):
        if not rest:
            raise UsageError(f"usage: {verb} ID [ID ...]")
        return verb, rest
    raise UsageError(f"unknown command {verb!r} (euro, audio, submit, watch, status, -)")


def read_commands(stream: TextIO) -> list[tuple[str, list[Any]]]:
    commands = []
    for line in stream:
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(parse_command(shlex.split(line)))
    return commands


async def run(url: str, token: str | None, commands: list[tuple[str, list[Any]]], out: TextIO) -> int:
    """Run the commands at once on one connection; print each answer as it comes; the exit status."""
    failed = False

    def emit(frame: dict[str, Any]) -> None:
        out.write(json.dumps(frame, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()

    async with Client(url, token) as client:
        async def one(verb: str, arguments: list[Any]) -> None:
            nonlocal failed
            try:
                if verb == "submit":
                    result = await client.submit(arguments[0], arguments[1])
                    failed |= not result.ok
                    emit(result.frame)
                elif verb == "watch":
                    await client.watch(arguments)
                    for job, outcome in zip(arguments, await asyncio.gather(
                            *(client.result(job) for job in arguments), return_exceptions=True), strict=True):
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
    parser.add_argument("command", nargs=argparse.REMAINDER, help="see below")
    options = parser.parse_args(argv)
    try:
        commands = read_commands(sys.stdin) if options.command == ["-"] else [parse_command(options.command)]
    except UsageError as exc:
        print(f"ami: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        return asyncio.run(asyncio.wait_for(run(options.url, options.token, commands, sys.stdout), options.timeout))
    except ConnectionFailed as exc:
        print(f"ami: {exc}", file=sys.stderr)
    except TimeoutError:
        print(f"ami: no answer within {options.timeout:g} s", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
