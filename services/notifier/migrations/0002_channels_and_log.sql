-- The notifier proper: channels, the read model of branches, deliveries and every attempt.
-- The skeleton's one-table log is kept for the record but no longer written.
ALTER TABLE deliveries RENAME TO skeleton_deliveries;

-- Read model, from membership.events: names, regions and parents of union branches.
CREATE TABLE branches (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    region_code text        NOT NULL,
    parent_id   uuid,
    kind        text,
    status      text        NOT NULL DEFAULT 'active',  -- active | merged | dissolved
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX branches_parent ON branches (parent_id) WHERE parent_id IS NOT NULL;

-- Who a member-level or session-level event concerns: ids only, nothing personal.
CREATE TABLE member_branches (
    member_id  uuid PRIMARY KEY,
    branch_id  uuid        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE session_organisers (
    session_id uuid PRIMARY KEY,
    branch_id  uuid,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    id              uuid PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('webhook', 'wecom', 'dingtalk', 'email')),
    name            text        NOT NULL,
    owner_kind      text        NOT NULL CHECK (owner_kind IN ('branch', 'federation')),
    owner_branch_id uuid,
    owner_region    text        NOT NULL,
    scope           text        NOT NULL DEFAULT 'own' CHECK (scope IN ('own', 'subtree')),
    event_types     text[]      NOT NULL,
    locale          text        NOT NULL DEFAULT 'zh-CN' CHECK (locale IN ('zh-CN', 'en')),
    config          jsonb       NOT NULL DEFAULT '{}',   -- nothing secret: format, keyword, masked hints
    secrets         bytea       NOT NULL,                -- AES-256-GCM (vault.py): keys, tokens, URLs, addresses
    quiet_hours     jsonb,
    status          text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'disabled')),
    paused_reason   text,
    paused_at       timestamptz,
    failing_since   timestamptz,
    seed            boolean     NOT NULL DEFAULT false,  -- created from CHANGAI_NOTIFIER_WEBHOOKS
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((owner_kind = 'branch') = (owner_branch_id IS NOT NULL))
);
CREATE INDEX channels_owner_branch ON channels (owner_branch_id) WHERE owner_branch_id IS NOT NULL;
CREATE INDEX channels_owner_region ON channels (owner_region);

-- Workers keep channels in memory; every change wakes them.
CREATE FUNCTION channels_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifier_channels', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER channels_changed AFTER INSERT OR UPDATE ON channels FOR EACH ROW EXECUTE FUNCTION channels_changed();

-- One row per notice: event × channel (resends are rows of their own). Status:
--   routed → ready → sending → delivered | retrying → … | dead;  held (channel paused), deferred (quiet hours).
CREATE TABLE deliveries (
    id               uuid PRIMARY KEY,
    event_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    event_time       timestamptz NOT NULL,
    channel_id       uuid        NOT NULL REFERENCES channels (id),
    branch_id        uuid,                 -- the branch the notice is about (filters)
    region_code      text,
    fallback_for     uuid,                 -- a paused channel this delivery stands in for
    resend_of        uuid REFERENCES deliveries (id),
    requested_by     text,                 -- who asked for a resend or a test
    status           text        NOT NULL DEFAULT 'routed',
    attempts         integer     NOT NULL DEFAULT 0,   -- every try, throttled ones included
    failures         integer     NOT NULL DEFAULT 0,   -- tries that count against the retry schedule
    payload          bytea,                -- what is sent: the event JSON, or the rendered notice
    payload_hash     text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    swept_at         timestamptz,
    last_status_code integer,
    last_errcode     integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
-- Exactly one notice per event × channel, whatever Kafka redelivers.
CREATE UNIQUE INDEX deliveries_once ON deliveries (event_id, channel_id) WHERE resend_of IS NULL;
CREATE INDEX deliveries_channel ON deliveries (channel_id, created_at DESC);
CREATE INDEX deliveries_branch ON deliveries (branch_id, created_at DESC) WHERE branch_id IS NOT NULL;
CREATE INDEX deliveries_created ON deliveries (created_at DESC);
CREATE INDEX deliveries_open ON deliveries (next_attempt_at)
    WHERE status IN ('routed', 'ready', 'sending', 'retrying', 'deferred');
CREATE INDEX deliveries_held ON deliveries (channel_id) WHERE status = 'held';

-- Every attempt, for audit: when, what came back, how long, a hash of the exact bytes sent.
CREATE TABLE attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  uuid        NOT NULL REFERENCES deliveries (id),
    channel_id   uuid        NOT NULL,
    n            integer     NOT NULL,
    send_id      uuid,        -- the request that carried it (several notices share one in a digest)
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    outcome      text,        -- delivered | failed | throttled | refused | interrupted (NULL: in flight)
    status_code  integer,
    errcode      integer,
    error        text,
    latency_ms   integer,
    payload_hash text,
    digest_of    integer,     -- sent inside a digest of this many notices
    requested_by text,
    UNIQUE (delivery_id, n)
);
CREATE INDEX attempts_channel_recent ON attempts (channel_id, started_at);
