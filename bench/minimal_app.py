"""The smallest Starlette WebSocket app under uvicorn: what an idle socket costs before the product adds anything.
Answers `ping` with `pong`, as the product does, so the same probe measures both.

    python -m bench.minimal_app PORT WS     (WS: uvicorn's --ws, websockets-sansio or websockets)
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            if await websocket.receive_text() == "ping":
                await websocket.send_text('{"type":"pong"}')
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[WebSocketRoute("/ws", socket)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), ws=sys.argv[2], log_level="warning",
                ws_per_message_deflate=False, backlog=4096)
