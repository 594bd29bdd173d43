-- Vocational skill level certificates issued outside the platform (人社厅's, through the event intake):
-- recorded for the member once per (issuer, certificate number); the member's skill level follows the
-- highest. No personal data: the person was found by the lookup hash and only the member id is kept.
CREATE TABLE external_certificates (
    id              uuid PRIMARY KEY,
    member_id       uuid        NOT NULL REFERENCES members (id),
    issuer          text        NOT NULL,
    certificate_no  text        NOT NULL,
    occupation      text        NOT NULL,
    occupation_code text,
    level           smallint    NOT NULL CHECK (level BETWEEN 1 AND 5),
    issued_on       date        NOT NULL,
    recorded_by     text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, certificate_no)
);
CREATE INDEX external_certificates_member ON external_certificates (member_id);
