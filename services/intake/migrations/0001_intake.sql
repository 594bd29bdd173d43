-- Event intake: the registered upstream sources and every event they sent (the dedupe key and its answer).

CREATE TABLE sources (
    id          uuid PRIMARY KEY,
    seq         bigserial   NOT NULL UNIQUE,           -- list order and cursor
    source      text        NOT NULL UNIQUE,           -- the CloudEvents `source` URI it emits under
    name        text        NOT NULL,
    region_code text        NOT NULL,                  -- GB/T 2260: it may emit only for branches under it
    event_types text[]      NOT NULL,                  -- upstream types it may emit
    client_id   text        NOT NULL UNIQUE,           -- the `sub` of its intake:emit tokens
    reply       text        NOT NULL CHECK (reply IN ('poll', 'webhook')),
    reply_url   text,
    status      text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((reply = 'webhook') = (reply_url IS NOT NULL))
);

-- One row per accepted (source, id), kept forever: the dedupe key and the answer to the source. No
-- personal data: the person's data went out sealed in the command (outbox), nothing of it is kept here.
CREATE TABLE intake_events (
    id          uuid PRIMARY KEY,                      -- the intake's record id (commands and outcomes carry it)
    source_id   uuid        NOT NULL REFERENCES sources (id),
    source      text        NOT NULL,
    event_id    text        NOT NULL,                  -- the CloudEvent's id, the source's own
    type        text        NOT NULL,
    channel     text        NOT NULL CHECK (channel IN ('http', 'kafka')),
    event_time  timestamptz,                           -- the CloudEvent's `time` (the lag is measured from it)
    received_at timestamptz NOT NULL DEFAULT now(),
    status      text        NOT NULL DEFAULT 'accepted' CHECK (status IN ('accepted', 'applied', 'rejected')),
    command_id  uuid        NOT NULL,
    member_id   uuid,
    problem     jsonb,                                 -- RFC 9457 problem of a rejection (no personal data)
    decided_at  timestamptz,
    replied_at  timestamptz,                           -- when the answer reached the source's webhook
    UNIQUE (source, event_id)
);
CREATE INDEX intake_events_unreplied ON intake_events (decided_at) WHERE decided_at IS NOT NULL AND replied_at IS NULL;
