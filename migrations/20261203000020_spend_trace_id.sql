-- The request's W3C trace id on each spend event (docs/observability.md, "Trace id on the spend event"), so an
-- auditor can go from a dollar to its trace. Nullable: older events and requests without a trace have none.
ALTER TABLE spend_events
    ADD COLUMN trace_id TEXT CHECK (trace_id ~ '^[0-9a-f]{32}$');
