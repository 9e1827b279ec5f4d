-- Backend health as each data plane reports it on its subscription (its breakers, health checks and latency).
-- A node's rows are replaced wholesale by each report; they stay when it disconnects, and the fleet view shows them
-- with the node's `connected` and `last_seen` so a stale view reads as stale. `model` is '' for the backend as a
-- whole. Texts are bounded by the control plane before they are stored (control-plane/src/health.rs).
CREATE TABLE backend_health (
    node_id          TEXT NOT NULL REFERENCES data_plane_nodes (node_id) ON DELETE CASCADE,
    backend          TEXT NOT NULL,
    model            TEXT NOT NULL DEFAULT '',
    state            TEXT NOT NULL,
    since            TIMESTAMPTZ NOT NULL,
    reason           TEXT,
    last_check_at    TIMESTAMPTZ,
    last_check_ok    BOOLEAN,
    last_check_error TEXT,
    latency_ms       DOUBLE PRECISION,
    reported_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, backend, model)
);

-- `GET /admin/v1/backends/{name}/health`: one backend across the fleet.
CREATE INDEX backend_health_by_backend ON backend_health (backend, node_id, model);
