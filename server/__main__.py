"""`python -m server`: read the settings, then run the server until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

import uvicorn

from server.app import create_app
from server.config import Settings, SettingsError


def run(settings: Settings) -> None:
    """Serve until told to stop; Ray, the actors and the sockets are closed on the way out."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        ws_max_size=max(4 * settings.max_frame_bytes, 1024 * 1024),
    )
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = Settings.load(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # uvicorn re-raises the signal that stopped it once it has shut down; exit 0 then, not 143.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
