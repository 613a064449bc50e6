"""The JetStream streams Vigil owns, created or updated idempotently at start."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from eventlog.envelope import SUBJECT_PREFIX

log = logging.getLogger(__name__)

EVENTS_STREAM = "VIGIL_EVENTS"
DEAD_LETTER_STREAM = "VIGIL_DEAD_LETTERS"
DEAD_LETTER_PREFIX = "vigil.dlq"
DEFAULT_DUPLICATE_WINDOW = 120.0


def events_stream_config(
    *, replicas: int = 1, duplicate_window: float = DEFAULT_DUPLICATE_WINDOW
) -> StreamConfig:
    return StreamConfig(
        name=EVENTS_STREAM,
        description="Vigil: every fact, the source of truth",
        subjects=[f"{SUBJECT_PREFIX}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=duplicate_window,
    )


def dead_letter_stream_config(*, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=DEAD_LETTER_STREAM,
        description="Vigil: messages a consumer gave up on, with the reason",
        subjects=[f"{DEAD_LETTER_PREFIX}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DEFAULT_DUPLICATE_WINDOW,
    )


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
) -> None:
    """Create the streams, or bring an existing one's settings up to date."""
    for config in (
        events_stream_config(replicas=replicas, duplicate_window=duplicate_window),
        dead_letter_stream_config(replicas=replicas),
    ):
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s (replicas=%d)", config.name, replicas)
        else:
            await js.update_stream(config)


def split_servers(url: str | Sequence[str]) -> list[str]:
    """`nats://a:4222,nats://b:4222` (a cluster) -> a server list for nats-py."""
    if isinstance(url, str):
        return [u.strip() for u in url.split(",") if u.strip()]
    return list(url)


async def connect(
    url: str | Sequence[str], *, name: str = "vigil", connect_timeout: float = 5.0
) -> NATS:
    """Connect with endless reconnects: a broker restart must not end a Vigil process."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    return await nats.connect(
        servers=split_servers(url),
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        allow_reconnect=True,
        error_cb=on_error,
    )
