-- One row per event × endpoint: the dedupe key that makes a notice arrive once.
CREATE TABLE deliveries (
    event_id         uuid        NOT NULL,
    endpoint         text        NOT NULL,
    event_type       text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts         integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    PRIMARY KEY (event_id, endpoint)
);
