-- Configuration lineage: the identity of this store's history of config versions. A version number means something
-- only within one lineage: a fresh database starts again at 0 under a new lineage, while a restored backup keeps its
-- lineage but goes back to an older version. Snapshots carry it so data planes can tell the two apart
-- (docs/lineage.md). A copy of the database meant to live on as a separate store (staging cloned from production)
-- should get a lineage of its own: UPDATE config_version SET lineage = gen_random_uuid();
ALTER TABLE config_version ADD COLUMN lineage UUID NOT NULL DEFAULT gen_random_uuid();

-- The fleet view: the lineage of the snapshot each node holds (said in its hello, then the one it ACKed; NULL when
-- unknown), and the last time a node gave up what it held for this store's configuration: a snapshot of another
-- lineage (or of none), or a version of this lineage the store had not reached (the store was behind its fleet).
ALTER TABLE data_plane_nodes
    ADD COLUMN lineage              UUID,
    ADD COLUMN adopted_from_lineage UUID,
    ADD COLUMN adopted_from_version BIGINT,
    ADD COLUMN adopted_reason       TEXT CHECK (adopted_reason IN ('lineage_changed', 'store_behind')),
    ADD COLUMN adopted_at           TIMESTAMPTZ;
