-- A session's enrolments (completion, cancellation, listing, the summary's join) and certificates
-- were found by scanning: the partial unique index on live enrolments does not serve
-- `WHERE session_id = $1` (found by the benchmark: completion slowed as enrolments grew).
CREATE INDEX enrolments_session ON enrolments (session_id, seq);
CREATE INDEX certificates_session ON certificates (session_id);
