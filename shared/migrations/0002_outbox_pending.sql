-- The relay's queue apart from the events: one small row (seq, lane) per outbox row not yet published.
-- Publishing deletes the queue rows (a ~40-byte tuple each) instead of `UPDATE outbox SET published_at`,
-- which wrote a new version of every ~800-byte event row (not HOT: published_at was indexed) — ~1,250
-- bytes of WAL an event, most of PostgreSQL's CPU in a bulk write — and whose reads went through partial
-- indexes the planner sized from stale statistics during a bulk load (a sort of the whole backlog on disk).
-- The outbox itself is now only ever inserted into; its rows stay as the record of what was written.

-- First wait for the writes in flight and hold new ones until this commits: a row committed between the copy
-- of the waiting rows below and the new trigger would otherwise never be queued.
LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE;
CREATE TABLE outbox_pending (
    seq  bigint   PRIMARY KEY,   -- outbox.seq; no foreign key: its check would cost a trigger call a row
    lane smallint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);  -- a queue: vacuum by churn
CREATE INDEX outbox_pending_lane ON outbox_pending (lane, seq);

INSERT INTO outbox_pending (seq, lane) SELECT seq, lane FROM outbox WHERE published_at IS NULL;

-- Every insert into the outbox, by any path (outbox.add, COPY, the notifier's SQL functions), queues its
-- rows in the same transaction and wakes the relays: once per statement, not per row.
CREATE OR REPLACE FUNCTION outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_pending (seq, lane) SELECT seq, lane FROM added;
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
DROP TRIGGER outbox_wake ON outbox;
CREATE TRIGGER outbox_wake AFTER INSERT ON outbox REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_wake();

-- A relay of the previous build still running during a rolling update fails on the dropped column and retries
-- (logged) until it is replaced; what it had sent but not marked is sent again with the same ids.
DROP INDEX outbox_unpublished;
DROP INDEX outbox_unpublished_seq;
DROP INDEX outbox_published_at;
ALTER TABLE outbox DROP COLUMN published_at;
