-- The spend ledger: one row per metered request, reported by the data planes (idempotent on the event id), and
-- daily and monthly roll-ups maintained in the same transaction as the inserts, so a report over whole UTC days or
-- months reads the roll-ups and is exact. Money is NUMERIC (unconstrained scale: costs are stored exactly as reported).

CREATE TABLE spend_events (
    id                    UUID PRIMARY KEY,             -- UUIDv7 from the data plane
    occurred_at           TIMESTAMPTZ NOT NULL,
    ingested_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    node_id               TEXT NOT NULL,
    key_id                TEXT NOT NULL,
    key_name              TEXT NOT NULL,
    team                  TEXT NOT NULL,                -- '' when the key has none
    alias                 TEXT NOT NULL,
    policy                TEXT NOT NULL,
    snapshot_version      BIGINT NOT NULL,
    backend               TEXT NOT NULL,
    backend_region        TEXT NOT NULL,
    model                 TEXT NOT NULL,
    upstream_model        TEXT NOT NULL,
    endpoint              TEXT NOT NULL,
    status                INTEGER NOT NULL,
    outcome               TEXT NOT NULL,
    streamed              BOOLEAN NOT NULL,
    interrupted           BOOLEAN NOT NULL,
    prompt_tokens         BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    cached_prompt_tokens  BIGINT NOT NULL CHECK (cached_prompt_tokens >= 0),
    completion_tokens     BIGINT NOT NULL CHECK (completion_tokens >= 0),
    cache_creation_tokens BIGINT NOT NULL CHECK (cache_creation_tokens >= 0),
    usage_estimated       BOOLEAN NOT NULL,
    cost_usd              NUMERIC NOT NULL CHECK (cost_usd >= 0),
    latency_ms            BIGINT NOT NULL,
    ttft_ms               BIGINT,
    request_id            TEXT NOT NULL,
    attempts              INTEGER NOT NULL,
    metadata              JSONB NOT NULL DEFAULT '{}',
    tool_calls            JSONB NOT NULL DEFAULT '[]'
);
-- Keyset pagination and time ranges; then the most common filters of event listings.
CREATE INDEX spend_events_time ON spend_events (occurred_at, id);
CREATE INDEX spend_events_key_time ON spend_events (key_name, occurred_at, id);
CREATE INDEX spend_events_team_time ON spend_events (team, occurred_at, id);

-- Sums per UTC day x key x team x alias x backend x model, from exactly the rows each ingestion inserted.
CREATE TABLE spend_daily (
    day                   DATE NOT NULL,
    key_id                TEXT NOT NULL,
    key_name              TEXT NOT NULL,
    team                  TEXT NOT NULL,
    alias                 TEXT NOT NULL,
    backend               TEXT NOT NULL,
    model                 TEXT NOT NULL,
    requests              BIGINT NOT NULL,
    errors                BIGINT NOT NULL,              -- outcome <> 'ok'
    estimated             BIGINT NOT NULL,              -- usage_estimated
    prompt_tokens         BIGINT NOT NULL,
    cached_prompt_tokens  BIGINT NOT NULL,
    completion_tokens     BIGINT NOT NULL,
    cache_creation_tokens BIGINT NOT NULL,
    cost_usd              NUMERIC NOT NULL,
    PRIMARY KEY (day, key_id, key_name, team, alias, backend, model)
) WITH (fillfactor = 70);
-- No other index: every query reads a range of days (the primary key's prefix), and each extra index would cost
-- every ingestion an index update per roll-up row. The free space (fillfactor) lets the upserts be HOT updates.

-- The same sums per calendar month (`month` is its first day), so reports and budgets over whole months read about
-- thirty times fewer rows than from `spend_daily`.
CREATE TABLE spend_monthly (
    month                 DATE NOT NULL,
    key_id                TEXT NOT NULL,
    key_name              TEXT NOT NULL,
    team                  TEXT NOT NULL,
    alias                 TEXT NOT NULL,
    backend               TEXT NOT NULL,
    model                 TEXT NOT NULL,
    requests              BIGINT NOT NULL,
    errors                BIGINT NOT NULL,
    estimated             BIGINT NOT NULL,
    prompt_tokens         BIGINT NOT NULL,
    cached_prompt_tokens  BIGINT NOT NULL,
    completion_tokens     BIGINT NOT NULL,
    cache_creation_tokens BIGINT NOT NULL,
    cost_usd              NUMERIC NOT NULL,
    PRIMARY KEY (month, key_id, key_name, team, alias, backend, model)
) WITH (fillfactor = 70);

-- Events that failed validation: not counted, but never dropped silently. One row per (node, id as sent).
CREATE TABLE spend_quarantine (
    node_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    field       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    event       TEXT NOT NULL,                          -- the event as received (debug rendering of the message)
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, event_id)
);
