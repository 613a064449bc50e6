"""The DuckDB tables: the event history and the read models folded from it.

Only `events` is a copy of the stream; every other table is derived and `vigil replay`
rebuilds all of them. `projector_checkpoints` is how far each stream has been applied,
written in the same transaction as the rows.
"""

import duckdb

TABLES = """
CREATE TABLE IF NOT EXISTS events (
    seq            BIGINT NOT NULL,      -- JetStream stream sequence
    id             UUID NOT NULL UNIQUE, -- event id (= Nats-Msg-Id)
    type           VARCHAR NOT NULL,
    incident_id    VARCHAR NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    source         VARCHAR NOT NULL,
    causation_id   UUID,
    correlation_id UUID,
    schema_version INTEGER NOT NULL,
    data           JSON NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    incident_id           VARCHAR PRIMARY KEY,
    status                VARCHAR NOT NULL,  -- open|investigating|diagnosed|remediating|resolved
    title                 VARCHAR,
    service               VARCHAR,
    severity              VARCHAR,
    predicted             BOOLEAN NOT NULL,  -- opened by a forecast, before the breach
    opened_at             TIMESTAMPTZ NOT NULL,
    acknowledged_at       TIMESTAMPTZ,
    acknowledged_by       VARCHAR,
    resolved_at           TIMESTAMPTZ,
    resolution            VARCHAR,
    root_cause            VARCHAR,
    root_cause_confidence DOUBLE,
    firing                VARCHAR[] NOT NULL,  -- fingerprints of anomalies still firing
    anomalies             INTEGER NOT NULL,
    tool_calls            INTEGER NOT NULL,
    event_count           INTEGER NOT NULL,
    last_event_at         TIMESTAMPTZ NOT NULL,
    last_seq              BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tool_calls (
    incident_id  VARCHAR NOT NULL,
    tool_call_id VARCHAR NOT NULL,
    tool_name    VARCHAR NOT NULL,
    args         JSON,
    turn         INTEGER,
    status       VARCHAR NOT NULL,  -- requested|completed|failed
    requested_at TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    duration_ms  DOUBLE,
    timed_out    BOOLEAN NOT NULL,
    error        VARCHAR,
    result       JSON,
    PRIMARY KEY (incident_id, tool_call_id)
);
CREATE TABLE IF NOT EXISTS saga_steps (
    saga_id         VARCHAR NOT NULL,
    step            INTEGER NOT NULL,
    incident_id     VARCHAR NOT NULL,
    action          VARCHAR NOT NULL,
    params          JSON,
    idempotency_key VARCHAR,
    status          VARCHAR NOT NULL,
    -- started|succeeded|failed|compensating|compensated|compensation_failed
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    compensated_at  TIMESTAMPTZ,
    error           VARCHAR,
    output          JSON,
    PRIMARY KEY (saga_id, step)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    stream      VARCHAR NOT NULL,    -- where the message was
    stream_seq  BIGINT NOT NULL,
    consumer    VARCHAR NOT NULL,    -- who gave up on it ('projector' for unreadable events)
    subject     VARCHAR NOT NULL,
    reason      VARCHAR NOT NULL,
    deliveries  INTEGER NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    payload     VARCHAR NOT NULL,    -- base64 of the message body
    PRIMARY KEY (stream, stream_seq, consumer)
);
CREATE TABLE IF NOT EXISTS projector_checkpoints (
    stream   VARCHAR PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS projector_meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE OR REPLACE VIEW mttr_by_service AS
    SELECT coalesce(service, 'unknown') AS service,
           count(*) AS resolved_incidents,
           avg(epoch(resolved_at) - epoch(opened_at)) AS mttr_seconds
    FROM incidents WHERE resolved_at IS NOT NULL GROUP BY 1 ORDER BY mttr_seconds DESC;
CREATE OR REPLACE VIEW noisiest_alerts AS
    SELECT data->>'name' AS alert, count(*) AS firings, count(DISTINCT incident_id) AS incidents
    FROM events
    WHERE type = 'AnomalyDetected' AND coalesce(data->>'returned', 'false') = 'false'
    GROUP BY 1 ORDER BY firings DESC;
"""

READ_MODEL_TABLES = ("events", "incidents", "tool_calls", "saga_steps", "dead_letters")


# Columns added since a file's tables were first made (a file of an older Vigil gets them).
ADDED_COLUMNS = """
-- when each of `firing` began, in the same order: an ending (a resolution, a withdrawal) of
-- an older firing of the same fingerprint leaves a newer one firing, whatever their order
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS firing_since TIMESTAMPTZ[];
"""


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(TABLES)
    con.execute(ADDED_COLUMNS)
    con.execute(
        "INSERT OR IGNORE INTO projector_meta VALUES ('db_id', replace(uuid()::VARCHAR, '-', ''))"
    )


def database_id(con: duckdb.DuckDBPyConnection) -> str:
    """A random id made with the file: names its projector consumer and its SQL subject."""
    row = con.execute("SELECT value FROM projector_meta WHERE key = 'db_id'").fetchone()
    assert row is not None, "schema not created"
    return str(row[0])
