-- The control plane's store. Forward-only: never edit a migration that has shipped; add a new one.
--
-- Every configuration resource has the same shape: an immutable name (its identity in URLs, references and
-- policy files), the validated spec as JSONB, and the config version of its last write (`revision`).
-- Money is NUMERIC, never floating point: generated columns expose prices and limits as exact numbers.

-- One row: the global config version. Every mutation bumps it first, which also serialises writers.
CREATE TABLE config_version (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version    BIGINT NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO config_version (version) VALUES (0);

CREATE TABLE backends (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    spec       JSONB NOT NULL,
    kind       TEXT GENERATED ALWAYS AS (spec->>'kind') STORED,
    base_url   TEXT GENERATED ALWAYS AS (spec->>'base_url') STORED,
    region     TEXT GENERATED ALWAYS AS (spec->>'region') STORED,
    revision   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE models (
    id                   UUID PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    spec                 JSONB NOT NULL,
    backend              TEXT GENERATED ALWAYS AS (spec->>'backend') STORED,
    -- USD per one million tokens.
    price_input          NUMERIC(20, 10) GENERATED ALWAYS AS ((spec->'pricing'->>'input')::NUMERIC) STORED,
    price_cached_input   NUMERIC(20, 10) GENERATED ALWAYS AS ((spec->'pricing'->>'cached_input')::NUMERIC) STORED,
    price_output         NUMERIC(20, 10) GENERATED ALWAYS AS ((spec->'pricing'->>'output')::NUMERIC) STORED,
    revision             BIGINT NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by           TEXT NOT NULL,
    updated_by           TEXT NOT NULL,
    CONSTRAINT models_priced CHECK (price_input >= 0 AND price_output >= 0 AND (price_cached_input IS NULL OR price_cached_input >= 0))
);
CREATE INDEX models_backend ON models (backend);

CREATE TABLE model_aliases (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    spec       JSONB NOT NULL,
    revision   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE route_policies (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    spec       JSONB NOT NULL,
    priority   INTEGER GENERATED ALWAYS AS ((spec->>'priority')::INTEGER) STORED,
    revision   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE tool_schemas (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    spec       JSONB NOT NULL,
    revision   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE tool_policies (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    spec       JSONB NOT NULL,
    revision   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE budgets (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    spec       JSONB NOT NULL,
    limit_usd  NUMERIC(20, 10) GENERATED ALWAYS AS ((spec->>'limit_usd')::NUMERIC) STORED,
    period     TEXT GENERATED ALWAYS AS (spec->>'period') STORED,
    revision   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    CONSTRAINT budgets_positive CHECK (limit_usd > 0)
);

-- Virtual keys for applications. Only a SHA-256 of the secret is kept; `prefix` lets people recognise a key.
CREATE TABLE api_keys (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    prefix          TEXT NOT NULL,
    secret_sha256   TEXT NOT NULL UNIQUE,
    team            TEXT,
    tags            TEXT[] NOT NULL DEFAULT '{}',
    allowed_aliases TEXT[] NOT NULL DEFAULT '{}',
    rpm_limit       INTEGER CHECK (rpm_limit > 0),
    tpm_limit       BIGINT CHECK (tpm_limit > 0),
    expires_at      TIMESTAMPTZ,
    revoked_at      TIMESTAMPTZ,
    revision        BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by      TEXT NOT NULL,
    updated_by      TEXT NOT NULL
);
CREATE INDEX api_keys_team ON api_keys (team);
CREATE INDEX api_keys_allowed_aliases ON api_keys USING GIN (allowed_aliases);

-- Admin API principals. The bootstrap principal's token comes from configuration.
CREATE TABLE admin_principals (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'author', 'auditor')),
    token_sha256  TEXT NOT NULL UNIQUE,
    revoked_at    TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by    TEXT NOT NULL
);

-- Append-only: who changed what, when, with the resource before and after (secrets redacted).
CREATE TABLE audit_log (
    id             BIGSERIAL PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource_kind  TEXT NOT NULL,
    resource_name  TEXT NOT NULL,
    config_version BIGINT NOT NULL,
    request_id     TEXT,
    before         JSONB,
    after          JSONB
);
CREATE INDEX audit_log_resource ON audit_log (resource_kind, resource_name, id);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_at ON audit_log (at);
