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
    -- started|succeeded|failed|compensating|compensated|compensation_failed|
    -- compensation_escalated
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    compensated_at  TIMESTAMPTZ,
    error           VARCHAR,
    output          JSON,
    PRIMARY KEY (saga_id, step)
);
CREATE TABLE IF NOT EXISTS sagas (
    saga_id               VARCHAR PRIMARY KEY,
    incident_id           VARCHAR NOT NULL,
    status                VARCHAR NOT NULL,
    -- proposed|awaiting_approval|approved|running|verifying|compensating (on its way);
    -- completed|compensated|rejected|escalated (its end)
    actions               VARCHAR[] NOT NULL,  -- each step's action, in order
    services              VARCHAR[] NOT NULL,  -- the services its steps touch (once started)
    steps                 INTEGER NOT NULL,
    mode                  VARCHAR,             -- auto|approval|dry_run
    risk                  VARCHAR,
    rationale             VARCHAR,
    proposed_by           VARCHAR,             -- a person, or responder (the report's remedy)
    dry_run               BOOLEAN NOT NULL,
    approved_by           VARCHAR,
    approved_at           TIMESTAMPTZ,
    rejected_by           VARCHAR,
    reason                VARCHAR,             -- why it did not complete
    proposed_at           TIMESTAMPTZ,
    started_at            TIMESTAMPTZ,
    ended_at              TIMESTAMPTZ,         -- when it reached its end
    steps_succeeded       INTEGER NOT NULL,
    failed_step           INTEGER,
    steps_escalated       INTEGER NOT NULL,    -- compensations that failed every try
    verification          VARCHAR,             -- passed|failed
    verification_check    VARCHAR,
    verification_observed DOUBLE,
    measurements          INTEGER NOT NULL
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
CREATE OR REPLACE VIEW remediations AS
    SELECT s.saga_id, s.incident_id, i.service, i.title AS alert, i.root_cause,
           s.actions, s.services, s.mode, s.risk, s.dry_run,
           CASE
               WHEN s.status = 'completed' AND s.dry_run THEN 'dry_run'
               WHEN s.status = 'completed' AND s.verification = 'passed' THEN 'worked'
               WHEN s.status = 'completed' THEN 'unverified'
               WHEN s.status IN ('compensated', 'rejected', 'escalated') THEN s.status
               ELSE 'in_progress'
           END AS outcome,
           s.status, s.reason, s.verification_check AS verified_by,
           s.verification_observed AS observed, s.proposed_by, s.approved_by, s.rejected_by,
           s.proposed_at, s.started_at, s.ended_at,
           epoch(s.ended_at) - epoch(s.started_at) AS seconds
    FROM sagas s LEFT JOIN incidents i USING (incident_id);
CREATE OR REPLACE VIEW remediation_outcomes AS
    WITH tried AS (
        SELECT unnest(list_distinct(actions)) AS action, coalesce(service, 'unknown') AS service,
               outcome, started_at, seconds, started_at IS NOT NULL AND NOT dry_run AS ran
        FROM remediations
    )
    SELECT action, service,
           count(*) FILTER (WHERE ran) AS tried,
           count(*) FILTER (WHERE outcome = 'worked') AS worked,
           count(*) FILTER (WHERE outcome = 'compensated') AS compensated,
           count(*) FILTER (WHERE outcome = 'escalated') AS escalated,
           count(*) FILTER (WHERE outcome = 'rejected') AS rejected,
           round(count(*) FILTER (WHERE outcome = 'worked') / nullif(count(*) FILTER (
               WHERE outcome IN ('worked', 'compensated', 'escalated')), 0), 3) AS worked_share,
           round(median(seconds) FILTER (WHERE outcome = 'worked'), 1) AS median_seconds_to_work,
           max(started_at) FILTER (WHERE ran) AS last_tried_at,
           arg_max(outcome, started_at) FILTER (WHERE ran) AS last_outcome
    FROM tried GROUP BY action, service ORDER BY tried DESC, action, service;
"""

READ_MODEL_TABLES = (
    "events",
    "incidents",
    "investigations",
    "tool_calls",
    "sagas",
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
-- the compensating action a step was undone with, its params and key, and how many tries
ALTER TABLE saga_steps ADD COLUMN IF NOT EXISTS compensation_action VARCHAR;
ALTER TABLE saga_steps ADD COLUMN IF NOT EXISTS compensation_params JSON;
ALTER TABLE saga_steps ADD COLUMN IF NOT EXISTS compensation_key VARCHAR;
ALTER TABLE saga_steps ADD COLUMN IF NOT EXISTS compensation_attempts INTEGER;
"""


def create_schema(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """Make the tables, columns and views a file lacks; returns the tables it made (every one,
    for a new file)."""
    before = _tables(con)
    con.execute(TABLES)
    con.execute(ADDED_COLUMNS)
    con.execute(
        "INSERT OR IGNORE INTO projector_meta VALUES ('db_id', replace(uuid()::VARCHAR, '-', ''))"
    )
    return frozenset(_tables(con) - before)


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    found = con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'")
    return {name for (name,) in found.fetchall()}


def database_id(con: duckdb.DuckDBPyConnection) -> str:
    """A random id made with the file: names its projector consumer and its SQL subject."""
    row = con.execute("SELECT value FROM projector_meta WHERE key = 'db_id'").fetchone()
    assert row is not None, "schema not created"
    return str(row[0])
