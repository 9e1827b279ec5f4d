-- Data planes as the control plane replicas see them: which version each runs, who is behind, who refused what.
-- Kept in Postgres so every replica shows the whole fleet, whichever replica a data plane is connected to.
CREATE TABLE data_plane_nodes (
    node_id           TEXT PRIMARY KEY,
    replica           TEXT NOT NULL,
    software_version  TEXT NOT NULL DEFAULT '',
    connected         BOOLEAN NOT NULL,
    connected_since   TIMESTAMPTZ,
    last_seen         TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The version the node holds: said in its hello, or acknowledged since.
    acked_version     BIGINT,
    acked_at          TIMESTAMPTZ,
    last_nack_version BIGINT,
    last_nack_error   TEXT,
    last_nack_at      TIMESTAMPTZ
);
