"""A tool module for the parallel-speedup benchmark (`VIGIL_TOOL_MODULES=bench.sleepy_tools`):
`sleep_1s` waits one second and answers, as a slow read-only diagnostic would."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict

from responder.tools import Tool, ToolContext

SECONDS = 1.0


class SleepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = 0


async def sleep_1s(ctx: ToolContext, args: SleepArgs) -> dict[str, Any]:
    await asyncio.sleep(SECONDS)
    return {"n": args.n, "slept": SECONDS}


SLEEP = Tool(name="sleep_1s", description="waits one second", args=SleepArgs, run=sleep_1s)
TOOLS = [SLEEP]
