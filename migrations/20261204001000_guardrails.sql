-- Guardrails (docs/guardrails.md): a configuration resource of the same shape as the others, and what each spend
-- event's guardrails found (per guardrail, detector, action and side: names and counts, never content).
CREATE TABLE guardrails (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    spec       JSONB NOT NULL,
    revision   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    updated_by TEXT NOT NULL
);

ALTER TABLE spend_events
    ADD COLUMN guardrails JSONB NOT NULL DEFAULT '[]';
