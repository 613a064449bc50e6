"""An ASGI app served by uvicorn on a free loopback port for the length of a block: what the
tests use to stand in for a third-party HTTP service (an LLM provider, a deployer)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """`http://127.0.0.1:PORT`, listening once yielded; stopped when the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)  # what serve() does before startup()
    await server.startup(sockets=[sock])  # listening once it returns
    task = asyncio.create_task(server.main_loop())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task
        await server.shutdown(sockets=[sock])
        sock.close()
