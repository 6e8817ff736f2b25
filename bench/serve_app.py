"""The same echo work behind Ray Serve's own WebSocket ingress, for comparison.

A FastAPI `@app.websocket` route served by a Serve ingress deployment calls a downstream echo deployment
through a deployment handle (a route defined on the ingress class itself is refused with HTTP 403 here),
speaking the same submit/accepted/result frames as the product, so one load generator drives both.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from ray import serve
from ray.serve.handle import DeploymentHandle

app = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=1000)
class Echo:
    async def __call__(self, args: dict[str, Any]) -> dict[str, Any]:
        delay = args.get("delay_ms", 0)
        if delay:
            await asyncio.sleep(delay / 1000)
        return args


@app.websocket("/ws")
async def socket(websocket: WebSocket) -> None:
    echo = serve.get_deployment_handle("Echo", app_name="bench")
    await websocket.accept()
    outbox: asyncio.Queue[str] = asyncio.Queue()

    async def write() -> None:
        while True:
            await websocket.send_text(await outbox.get())

    async def run(frame: dict[str, Any]) -> None:
        result = await echo.remote(frame.get("args", {}))
        outbox.put_nowait(json.dumps({"type": "result", "ref": frame.get("ref"), "status": "succeeded",
                                      "result": result}))

    writer = asyncio.create_task(write())
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            frame = json.loads(await websocket.receive_text())
            outbox.put_nowait(json.dumps({"type": "accepted", "ref": frame.get("ref")}))
            task = asyncio.create_task(run(frame))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except WebSocketDisconnect:
        pass
    finally:
        writer.cancel()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=10000)
@serve.ingress(app)
class Ingress:
    def __init__(self, echo: DeploymentHandle) -> None:
        self.echo = echo  # bound so that Serve deploys Echo with the app


def application() -> Any:
    return Ingress.bind(Echo.bind())  # type: ignore[attr-defined]
