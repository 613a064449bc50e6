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
    root_cause            VARCHAR,             -- the latest report's top category
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
CREATE TABLE IF NOT EXISTS investigations (
    incident_id    VARCHAR NOT NULL,
    attempt        INTEGER NOT NULL,
    model          VARCHAR,
    reason         VARCHAR,
    requested_by   VARCHAR,
    status         VARCHAR NOT NULL,  -- running|concluded|partial
    started_at     TIMESTAMPTZ,       -- NULL until its InvestigationStarted is seen
    concluded_at   TIMESTAMPTZ,
    duration_ms    DOUBLE,            -- concluded_at - started_at
    model_requests INTEGER NOT NULL,
    tool_calls     INTEGER NOT NULL,
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL,
    cost           DOUBLE,            -- USD; NULL when nothing reported one
    top_category   VARCHAR,           -- the report's first (most likely) hypothesis
    top_service    VARCHAR,
    top_confidence DOUBLE,
    partial        BOOLEAN NOT NULL,
    partial_reason VARCHAR,
    summary        VARCHAR,
    PRIMARY KEY (incident_id, attempt)
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
CREATE OR REPLACE VIEW investigation_outcomes AS
    SELECT coalesce(model, 'unknown') AS model,
           count(*) AS investigations,
           count(*) FILTER (WHERE status <> 'running') AS concluded,
           round(avg(partial::INTEGER) FILTER (WHERE status <> 'running'), 3) AS partial_share,
           round(avg(duration_ms) / 1000, 1) AS avg_seconds,
           round(avg(tool_calls) FILTER (WHERE status <> 'running'), 1) AS avg_tool_calls,
           sum(cost) AS cost_usd,
           histogram(top_category) AS top_categories
    FROM investigations GROUP BY 1 ORDER BY investigations DESC, model;
"""

READ_MODEL_TABLES = (
    "events",
    "incidents",
    "investigations",
    "tool_calls",
    "saga_steps",
    "dead_letters",
)


# Columns added since a file's tables were first made (a file of an older Vigil gets them).
ADDED_COLUMNS = """
-- when each of `firing` began, in the same order: an ending (a resolution, a withdrawal) of
-- an older firing of the same fingerprint leaves a newer one firing, whatever their order
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS firing_since TIMESTAMPTZ[];
-- the root cause: the first (most likely) hypothesis of the latest attempt's report
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS root_cause_service VARCHAR;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS root_cause_summary VARCHAR;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS root_cause_attempt INTEGER;
-- which attempt of the investigation asked for it; the earlier call a reused result is from
ALTER TABLE tool_calls ADD COLUMN IF NOT EXISTS attempt INTEGER;
ALTER TABLE tool_calls ADD COLUMN IF NOT EXISTS reused_from VARCHAR;
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
