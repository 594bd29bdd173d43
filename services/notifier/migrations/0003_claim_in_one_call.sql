-- Claiming a delivery for one attempt, in one round trip.
--
-- A delivery's id is derived from its event and channel (uuid5), so routing and rendering
-- write nothing: the deliver record carries the whole delivery (ids, payload), and its
-- first claim creates the row (the unique index still allows one per event × channel).
-- The claim commits without waiting for the WAL flush: if the database crashed before
-- flushing it, the deliver record was not yet acknowledged (that waits for the outcome,
-- committed durably, and flushing the outcome flushes the claim before it), so the claim
-- is simply made again. A crash can cost a repeated attempt, never a lost notice.
--
-- decision: claimed | unknown | done | busy | early | held | deferred | cancelled
CREATE FUNCTION notifier_claim(
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
        INSERT INTO outbox (event_id, topic, key, lane, event_type, value)
        VALUES (gen_random_uuid(), p_defer_topic, d.channel_id::text, p_defer_lane,
                'notifier.internal.' || p_defer_topic, p_defer_value);
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
