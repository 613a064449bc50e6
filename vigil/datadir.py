"""One Vigil per data dir: its DuckDB file and its embedded broker's store are not shared."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "vigil.lock"


class DataDirBusy(RuntimeError):
    """Another Vigil process holds the data dir."""


@contextlib.contextmanager
def holding(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data dir while the block runs (the kernel drops it if the
    process dies, so a kill -9 leaves nothing to clean up)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise DataDirBusy(
                f"data dir {data_dir} is in use by {holder}: stop it, or set VIGIL_DATA_DIR"
            ) from None
        lock.truncate(0)
        lock.write(f"vigil pid {os.getpid()}")
        lock.flush()
        yield
