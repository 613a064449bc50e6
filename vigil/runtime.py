"""runtime.json in the data dir: how a second `vigil` command finds the running one."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

RUNTIME_FILE = "runtime.json"


class Runtime(BaseModel):
    pid: int
    nats_url: str
    sql_subject: str
    started_at: datetime


def write_runtime(
    data_dir: Path, *, nats_url: str, sql_subject: str, pid: int | None = None
) -> Path:
    """`pid` is the Vigil that holds the data dir (`vigil up`, whose child may write this)."""
    path = data_dir / RUNTIME_FILE
    runtime = Runtime(
        pid=pid or os.getpid(),
        nats_url=nats_url,
        sql_subject=sql_subject,
        started_at=datetime.now(UTC),
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(runtime.model_dump_json(indent=2))
    tmp.replace(path)
    return path


def read_runtime(data_dir: Path) -> Runtime | None:
    path = data_dir / RUNTIME_FILE
    try:
        return Runtime.model_validate_json(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def clear_runtime(data_dir: Path, pid: int | None = None) -> None:
    runtime = read_runtime(data_dir)
    if runtime is not None and runtime.pid == (pid or os.getpid()):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / RUNTIME_FILE).unlink()
