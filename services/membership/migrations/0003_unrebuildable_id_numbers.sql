-- Issue 12: the full ID number could be rebuilt without any key from what was stored in clear:
-- left(id_masked, 6) || to_char(birth_date, 'YYYYMMDD') || right(id_masked, 4).
-- From now on the clear columns hold, of the 18 characters, only the last 4 (sequence + check
-- character), the birth YEAR and the home PREFECTURE (GB/T 2260 code with its last two digits 00):
-- the county (2 digits) and the birth month and day stay unknown, several hundred candidates that
-- only the HMAC key (lookup hash) or the AES key (id_cipher) can tell apart. The full number
-- stays in id_cipher (AES-256-GCM), for :reveal.
ALTER TABLE members ADD COLUMN birth_year smallint;
UPDATE members SET birth_year = extract(year FROM birth_date)::smallint,
                   id_masked = repeat('*', 14) || right(id_masked, 4),
                   home_region_code = left(home_region_code, 4) || '00';
ALTER TABLE members ALTER COLUMN birth_year SET NOT NULL;
ALTER TABLE members DROP COLUMN birth_date;

-- Every lookup by ID number (POST /v1/members:lookup) is audited like a reveal: who, when, the
-- trace id, and what came of it. The same rows rate-limit lookups per caller (counted in the
-- last minute), so the limit holds across replicas.
CREATE TABLE member_lookups (
    id           uuid PRIMARY KEY,
    seq          bigserial   NOT NULL UNIQUE,       -- the audit list's cursor order
    subject      text        NOT NULL,
    scope_region text        NOT NULL,             -- the caller's organisation scope
    outcome      text        NOT NULL CHECK (outcome IN ('found', 'not_found', 'rate_limited')),
    member_id    uuid,                             -- when found (in the caller's scope)
    trace_id     text,
    looked_up_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX member_lookups_subject ON member_lookups (subject, looked_up_at);
CREATE INDEX member_lookups_scope ON member_lookups (scope_region, looked_up_at);
