"""`python -m server`: read the settings, then run the server until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from server import preflight, recovery
from server.access import redact_tokens_in_logs
from server.app import announce, create_app, raise_file_limit, uvicorn_options
from server.config import Settings, SettingsError
from server.raysetup import kill_descendants

HARD_STOP_AFTER = 30.0  # seconds past the graceful timeout before the server kills what it started and exits


class Server(uvicorn.Server):
    """uvicorn's server, which prints where to go once it is listening."""

    def __init__(self, config: uvicorn.Config, settings: Settings, app: Starlette) -> None:
        super().__init__(config)
        self.settings = settings
        self.starlette = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            announce(self.settings, self.starlette.state.services)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            # uvicorn's graceful timeout bounds the requests; this bounds everything after them (Ray's shutdown).
            watchdog = threading.Timer(self.settings.shutdown_timeout + HARD_STOP_AFTER, _force_exit)
            watchdog.daemon = True
            watchdog.start()
        super().handle_exit(sig, frame)


class OneLineStartupError(logging.Filter):
    """A start-up refusal raised once Ray is up (no node can take a kind's actors) is one line, as the refusals
    before Ray are: uvicorn would log Starlette's whole traceback, then a line of its own."""

    def __init__(self, app: Starlette) -> None:
        super().__init__()
        self.app = app

    def filter(self, record: logging.LogRecord) -> bool:
        refused = getattr(self.app.state, "startup_error", None)
        if refused is None:
            return True
        if refused in record.getMessage() and "Traceback" in record.getMessage():
            record.msg, record.args = f"error: {refused}", ()
            return True
        return "startup failed" not in record.getMessage()


def _force_exit() -> None:
    print("error: the server did not stop in time; killing what it started", file=sys.stderr, flush=True)
    kill_descendants()
    os._exit(1)


def run(settings: Settings, sock: socket.socket) -> int:
    """Serve on `sock` until told to stop; Ray, the actors and the sockets are closed on the way out."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_file_limit()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        **uvicorn_options(settings, app),
    )
    redact_tokens_in_logs()  # after uvicorn configured its loggers: its access log writes whole request lines
    logging.getLogger("uvicorn.error").addFilter(OneLineStartupError(app))
    Server(config, settings, app).run(sockets=[sock])
    return 2 if getattr(app.state, "startup_error", None) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["recover-store"]:
        return recover_store(args[1:])
    try:
        settings = Settings.load(args)
        sock = preflight.listen_socket(settings)  # before Ray: its processes take ephemeral ports
        settings = settings.replace(port=int(sock.getsockname()[1]))
        if not settings.ray_address and settings.dashboard:
            settings = settings.replace(dashboard_port=preflight.port_or_another(settings.dashboard_port))
        if not settings.ray_address:
            settings = settings.replace(ray_metrics_port=preflight.port_or_another(settings.ray_metrics_port))
        recovery.check_data_dir(settings)  # the store's file and the embedded Ray's process record live there
        if settings.store == "sqlite":
            recovery.check_database(recovery.database(settings))
        preflight.check_store(settings)
        preflight.check_ray_address(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # uvicorn re-raises the signal that stopped it once it has shut down cleanly: exit 0 then.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    return run(settings, sock)


def recover_store(argv: Sequence[str]) -> int:
    """`python -m server recover-store [--data-dir DIR]`: move a damaged SQLite job store aside, salvage its jobs."""
    try:
        settings = Settings.load(argv)
        recovery.check_data_dir(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(recovery.recover(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
