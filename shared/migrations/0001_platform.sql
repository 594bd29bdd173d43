-- The platform's own tables, in every service database.

-- Transactional outbox: written in the same transaction as the domain change.
-- A row's lane (hash of its key) lets several relays share the work while each
-- key, and so each aggregate, is published in order by one relay at a time.
CREATE TABLE outbox (
    seq          bigserial PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    topic        text        NOT NULL,
    key          text        NOT NULL,
    lane         smallint    NOT NULL,
    event_type   text        NOT NULL,
    value        bytea       NOT NULL,   -- the exact CloudEvent bytes to publish
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (lane, seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE outbox_lanes (lane smallint PRIMARY KEY);
INSERT INTO outbox_lanes SELECT generate_series(0, 15);

-- One notification per statement, not per row: a bulk import of 100,000 rows wakes the relay once.
CREATE FUNCTION outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_wake AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_wake();

-- Inbox: ids of events a consumer has applied, written with the effect, so redelivery changes nothing.
CREATE TABLE inbox (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Idempotency keys of HTTP writes: the first answer, replayed for a repeat.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,   -- caller and operation
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status       integer,
    body         jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX outbox_unpublished_seq ON outbox (seq) WHERE published_at IS NULL;
