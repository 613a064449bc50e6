"""The JetStream streams Vigil owns, created or updated idempotently at start."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from eventlog.envelope import SUBJECT_PREFIX

log = logging.getLogger(__name__)

EVENTS_STREAM = "VIGIL_EVENTS"
DEAD_LETTER_STREAM = "VIGIL_DEAD_LETTERS"
DEAD_LETTER_PREFIX = "vigil.dlq"
DEFAULT_DUPLICATE_WINDOW = 120.0


def _file_stream(
    name: str, description: str, subject: str, replicas: int, duplicate_window: float
) -> StreamConfig:
    return StreamConfig(
        name=name,
        description=description,
        subjects=[subject],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=duplicate_window,
    )


def events_stream_config(
    *, replicas: int = 1, duplicate_window: float = DEFAULT_DUPLICATE_WINDOW
) -> StreamConfig:
    return _file_stream(
        EVENTS_STREAM, "Vigil: every fact, the source of truth", f"{SUBJECT_PREFIX}.>",
        replicas, duplicate_window,
    )  # fmt: skip


def dead_letter_stream_config(*, replicas: int = 1) -> StreamConfig:
    return _file_stream(
        DEAD_LETTER_STREAM, "Vigil: messages a consumer gave up on, with the reason",
        f"{DEAD_LETTER_PREFIX}.>", replicas, DEFAULT_DUPLICATE_WINDOW,
    )  # fmt: skip


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
) -> None:
    """Create the streams, or bring the settings Vigil owns up to date on an existing one.

    Everything else an operator set (limits, max_age, placement) is kept, and replicas are
    never lowered from here: a process started without VIGIL_STREAM_REPLICAS must not shrink
    a 3-replica stream to 1.
    """
    for wanted in (
        events_stream_config(replicas=replicas, duplicate_window=duplicate_window),
        dead_letter_stream_config(replicas=replicas),
    ):
        name = wanted.name or ""
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(wanted)
            log.info("created stream %s (replicas=%d)", name, replicas)
            continue
        have = info.config
        if (have.num_replicas or 1) > replicas:
            log.warning("stream %s keeps its %d replicas (VIGIL_STREAM_REPLICAS=%d)",
                        name, have.num_replicas, replicas)  # fmt: skip
        update = {
            "subjects": wanted.subjects,
            "duplicate_window": wanted.duplicate_window,
            "num_replicas": max(have.num_replicas or 1, replicas),
        }
        if any(getattr(have, k) != v for k, v in update.items()):
            await js.update_stream(dataclasses.replace(have, **update))


async def key_value_bucket(
    js: JetStreamContext, bucket: str, *, description: str, history: int, replicas: int = 1
) -> KeyValue:
    """A key-value bucket, made on first use."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(
            bucket=bucket, description=description, history=history, replicas=replicas
        )
        return await js.create_key_value(config)


def split_servers(url: str | Sequence[str]) -> list[str]:
    """`nats://a:4222,nats://b:4222` (a cluster) -> a server list for nats-py."""
    if isinstance(url, str):
        return [u.strip() for u in url.split(",") if u.strip()]
    return list(url)


class BusUnreachable(ConnectionError):
    """No NATS server answered the first connection; the message names the URL."""


async def connect(
    url: str | Sequence[str],
    *,
    name: str = "vigil",
    connect_timeout: float = 2.0,
    first_attempts: int = 3,
) -> NATS:
    """Fail fast if NATS is not there at first; once connected, reconnect forever, so a broker
    restart never ends a Vigil process."""
    servers = split_servers(url)

    connected = False

    async def on_error(exc: Exception) -> None:
        # Before the first connection the failure is reported once, as BusUnreachable.
        log.log(logging.WARNING if connected else logging.DEBUG, "nats: %s", exc)

    try:
        nc = await nats.connect(
            servers=servers,
            name=name,
            connect_timeout=connect_timeout,
            max_reconnect_attempts=first_attempts,
            reconnect_time_wait=0.25,
            allow_reconnect=True,
            error_cb=on_error,
        )
    except (NoServersError, OSError, TimeoutError) as exc:
        raise BusUnreachable(
            f"cannot reach NATS at {', '.join(servers)} ({type(exc).__name__}); "
            "check VIGIL_NATS_URL and that nats-server runs with JetStream"
        ) from None
    nc.options["max_reconnect_attempts"] = -1  # from now on: never give up
    connected = True
    return nc
