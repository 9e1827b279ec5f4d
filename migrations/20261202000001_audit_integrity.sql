-- The audit log's integrity in the database itself.
--
-- 1. Append-only: a trigger refuses every UPDATE, DELETE and TRUNCATE of `audit_log`, whoever runs it (the control
--    plane's own role included). Only someone able to drop or disable triggers (a superuser or the table's owner)
--    can change a row, and the hash chain below shows it when they do.
-- 2. A hash chain: each row carries `prev_hash` (the previous row's `row_hash`; 32 zero bytes for the first row)
--    and `row_hash` = SHA-256(prev_hash || the row's canonical text, `audit_row_text`). The hash is computed by a
--    trigger in the inserting transaction. Writers are serialised by the `config_version` row lock already; the
--    trigger also takes a transaction-scoped advisory lock and draws the row's id after it (the column has no
--    default any more), so ids follow the chain's order whoever inserts. Rows that existed before this migration are
--    chained here, in id order: the chain covers the whole log.
--
-- `GET /admin/v1/audit/verify` recomputes every link with the same functions and reports the first broken one.

ALTER TABLE audit_log ADD COLUMN prev_hash BYTEA, ADD COLUMN row_hash BYTEA;

-- The canonical text of a row's content: a JSON array, so no field can bleed into the next. `at` is rendered in
-- UTC with microseconds, whatever the session's time zone; JSONB renders `before` and `after` canonically.
CREATE FUNCTION audit_row_text(r audit_log) RETURNS TEXT
LANGUAGE sql STABLE STRICT AS $$
    SELECT jsonb_build_array(
        r.id,
        to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        r.actor,
        r.action,
        r.resource_kind,
        r.resource_name,
        r.config_version,
        r.request_id,
        r.before,
        r.after
    )::TEXT
$$;

CREATE FUNCTION audit_row_hash(prev BYTEA, r audit_log) RETURNS BYTEA
LANGUAGE sql STABLE STRICT AS $$
    SELECT sha256(prev || convert_to(audit_row_text(r), 'UTF8'))
$$;

CREATE FUNCTION audit_genesis_hash() RETURNS BYTEA
LANGUAGE sql IMMUTABLE AS $$ SELECT decode(repeat('00', 32), 'hex') $$;

-- Chain the rows written before this migration.
DO $$
DECLARE
    r audit_log;
    prev BYTEA := audit_genesis_hash();
BEGIN
    FOR r IN SELECT * FROM audit_log ORDER BY id LOOP
        UPDATE audit_log SET prev_hash = prev, row_hash = audit_row_hash(prev, r) WHERE id = r.id;
        prev := audit_row_hash(prev, r);
    END LOOP;
END
$$;

ALTER TABLE audit_log ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN row_hash SET NOT NULL;

CREATE FUNCTION audit_log_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prev BYTEA;
BEGIN
    -- One chain writer at a time, then an id drawn after the lock: ids follow the chain's order.
    PERFORM pg_advisory_xact_lock(hashtext('audit_log_chain'));
    NEW.id := nextval(pg_get_serial_sequence('audit_log', 'id'));
    SELECT row_hash INTO prev FROM audit_log ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(prev, audit_genesis_hash());
    NEW.row_hash := audit_row_hash(NEW.prev_hash, NEW);
    RETURN NEW;
END
$$;

-- The trigger draws every id (after the lock), so the column's own default would only burn sequence values.
ALTER TABLE audit_log ALTER COLUMN id DROP DEFAULT;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_chain();

CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
