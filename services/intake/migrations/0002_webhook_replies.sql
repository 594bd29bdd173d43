-- Answers by webhook: the source's signing secret (Standard Webhooks, sealed like every secret) and,
-- per decided event of a webhook source, whether its answer still has to be sent.

ALTER TABLE sources ADD COLUMN reply_secret bytea;  -- AES-256-GCM (shared.crypto, purpose "intake"), never in clear

ALTER TABLE intake_events ADD COLUMN reply_pending  boolean     NOT NULL DEFAULT false;
ALTER TABLE intake_events ADD COLUMN reply_attempts integer     NOT NULL DEFAULT 0;
ALTER TABLE intake_events ADD COLUMN reply_next_at  timestamptz;
ALTER TABLE intake_events ADD COLUMN reply_error    text;

-- Only the answers still to send are indexed (a poll source's events never are).
DROP INDEX intake_events_unreplied;
CREATE INDEX intake_events_reply_pending ON intake_events (reply_next_at) WHERE reply_pending;
