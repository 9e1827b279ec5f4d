-- Each spend event's upstream attempts in order (docs/spend.md): backend, model, and how each ended (`answered` or
-- the failure's class), so a request served after failover names every candidate it went through.
ALTER TABLE spend_events
    ADD COLUMN attempt_log JSONB NOT NULL DEFAULT '[]';
