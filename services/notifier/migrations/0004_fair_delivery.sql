-- Fair, isolated delivery (the ADR: docs/adr/, "notifier fair delivery").
--
-- PostgreSQL is each channel's queue beyond what a worker holds in memory: a channel with a
-- backlog has its deliveries written here ('ready', due now) and read back in order, a retry
-- or a quiet-hours deferral waits here with its due time, and the worker that owns the
-- channel's partition of notifier.deliver schedules them from this index — instead of
-- re-queuing records through notifier.deferred / notifier.retry.* behind other channels' backlog.
CREATE INDEX deliveries_ready ON deliveries (channel_id, next_attempt_at) WHERE status = 'ready';
CREATE INDEX deliveries_waiting ON deliveries (channel_id, next_attempt_at) WHERE status IN ('retrying', 'deferred');
CREATE INDEX deliveries_waiting_due ON deliveries (next_attempt_at) WHERE status IN ('retrying', 'deferred');
CREATE INDEX deliveries_leased ON deliveries (channel_id, lease_until) WHERE status = 'sending';

-- Robots (WeCom, DingTalk) take 20 messages a minute per robot key / access token, however many
-- channels share it: the budget and a robot's block (DingTalk 130101: 10 minutes; WeCom 45009)
-- are kept per robot (a hash of kind and key, never the key), shared by every worker.
CREATE TABLE robot_sends (
    robot   text        NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX robot_sends_recent ON robot_sends (robot, sent_at);
CREATE TABLE robot_blocks (
    robot   text PRIMARY KEY,
    until   timestamptz NOT NULL,
    errcode integer,
    since   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Take one send from a robot's budget: 0 when taken (and recorded), else the seconds to wait
-- (the robot is blocked, or its window is full). One lock per robot: two workers, or two
-- channels sharing a key, never both take the last place.
CREATE FUNCTION notifier_robot_take(p_robot text, p_limit integer, p_window_s float8) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    blocked timestamptz;
    n       integer;
    oldest  timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('notifier-robot:' || p_robot, 0));
    SELECT until INTO blocked FROM robot_blocks WHERE robot = p_robot;
    IF blocked IS NOT NULL AND blocked > clock_timestamp() THEN
        RETURN extract(epoch FROM blocked - clock_timestamp());
    END IF;
    DELETE FROM robot_sends WHERE robot = p_robot AND sent_at <= clock_timestamp() - make_interval(secs => p_window_s);
    SELECT count(*), min(sent_at) INTO n, oldest FROM robot_sends WHERE robot = p_robot;
    IF n >= p_limit THEN
        RETURN greatest(0.01, extract(epoch FROM oldest + make_interval(secs => p_window_s) - clock_timestamp()));
    END IF;
    INSERT INTO robot_sends (robot) VALUES (p_robot);
    RETURN 0;
END $$;

CREATE OR REPLACE FUNCTION notifier_claim(
    p_id uuid, p_channel_id uuid, p_lease_s float8, p_send_id uuid,
    -- the delivery as routed (NULL event id: a retry, resend or sweep of an existing row)
    p_event_id uuid, p_event_type text, p_event_time timestamptz, p_branch_id uuid, p_region text,
    p_fallback uuid, p_payload bytea, p_payload_hash text,
    -- quiet hours: defer until then, with the record that brings it back (topic, lane, value)
    p_defer_until timestamptz, p_defer_topic text, p_defer_lane smallint, p_defer_value bytea)
RETURNS TABLE (decision text, attempt_id bigint, n integer, failures integer, payload bytea, event_id uuid,
               event_type text, event_time timestamptz, resend_of uuid, requested_by text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    d          deliveries%ROWTYPE;
    ch_status  text;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_event_id IS NOT NULL THEN
        INSERT INTO deliveries (id, event_id, event_type, event_time, channel_id, branch_id, region_code,
                                fallback_for, status, payload, payload_hash)
        VALUES (p_id, p_event_id, p_event_type, p_event_time, p_channel_id, p_branch_id, p_region, p_fallback,
                'ready', p_payload, p_payload_hash)
        ON CONFLICT DO NOTHING;
    END IF;
    SELECT * INTO d FROM deliveries WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        decision := 'unknown';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT status INTO ch_status FROM channels WHERE id = d.channel_id;
    IF d.status NOT IN ('ready', 'retrying', 'deferred', 'sending', 'routed') OR d.payload IS NULL THEN
        decision := 'done';
        RETURN NEXT;
        RETURN;
    END IF;
    IF d.status = 'sending' THEN
        IF d.lease_until > now() THEN
            decision := 'busy';
            RETURN NEXT;
            RETURN;
        END IF;
        -- The worker that held it died mid-attempt: the attempt's fate is unknown.
        UPDATE attempts SET outcome = 'interrupted', finished_at = clock_timestamp(),
                            error = 'worker stopped during the attempt'
         WHERE attempts.delivery_id = p_id AND outcome IS NULL;
    ELSIF d.next_attempt_at > now() + interval '1 second' THEN
        decision := 'early';
        RETURN NEXT;
        RETURN;
    END IF;
    IF ch_status = 'paused' THEN
        UPDATE deliveries SET status = 'held', lease_until = NULL, updated_at = now() WHERE id = p_id;
        decision := 'held';
        RETURN NEXT;
        RETURN;
    END IF;
    IF ch_status = 'disabled' THEN
        UPDATE deliveries SET status = 'dead', last_error = 'channel disabled', lease_until = NULL, updated_at = now()
         WHERE id = p_id;
        decision := 'cancelled';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_defer_until IS NOT NULL THEN
        UPDATE deliveries SET status = 'deferred', next_attempt_at = p_defer_until, lease_until = NULL,
                              updated_at = now() WHERE id = p_id;
        -- The worker's due-time scheduler brings it back (0004); a record is written only when
        -- a caller still asks for one (p_defer_topic), as before 0004.
        IF p_defer_topic IS NOT NULL AND p_defer_topic <> '' THEN
            INSERT INTO outbox (event_id, topic, key, lane, event_type, value)
            VALUES (gen_random_uuid(), p_defer_topic, d.channel_id::text, p_defer_lane,
                    'notifier.internal.' || p_defer_topic, p_defer_value);
        END IF;
        decision := 'deferred';
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE deliveries SET status = 'sending', attempts = d.attempts + 1,
                          lease_until = now() + make_interval(secs => p_lease_s), updated_at = now()
     WHERE id = p_id;
    INSERT INTO attempts (delivery_id, channel_id, n, send_id, requested_by)
    VALUES (p_id, d.channel_id, d.attempts + 1, p_send_id,
            CASE WHEN d.resend_of IS NOT NULL OR d.event_type LIKE 'changai.notifier.test%' THEN d.requested_by END)
    RETURNING id INTO attempt_id;
    decision := 'claimed';
    n := d.attempts + 1;
    failures := d.failures;
    payload := d.payload;
    event_id := d.event_id;
    event_type := d.event_type;
    event_time := d.event_time;
    resend_of := d.resend_of;
    requested_by := d.requested_by;
    RETURN NEXT;
END $$;
