"""The floor under the webhook: a FastAPI route that only reads the body and answers.

bench.webhook runs it under uvicorn in its own process, on the same path and with the same
uvicorn settings as `vigil up`, so the ratio to it is what the receiver itself costs.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/webhooks/alertmanager")
async def read_the_body(request: Request) -> dict[str, int]:
    return {"bytes": len(await request.body())}
