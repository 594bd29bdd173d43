-- Training service: programmes, sessions, enrolments, certificates, competitions, studios,
-- and its read model of members and branches (built from membership.events).

-- ---------------------------------------------------------------- member read model
CREATE TABLE member_model (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  integer     NOT NULL DEFAULT 1,   -- bumped by `rebuild-members`; names the consumer group
    rebuilt_at  timestamptz
);
INSERT INTO member_model DEFAULT VALUES;

CREATE TABLE members (
    id              uuid PRIMARY KEY,
    branch_id       uuid        NOT NULL,
    region_code     text        NOT NULL,
    city_code       text,
    employment_form text        NOT NULL,
    occupation      text,
    skill_level     smallint CHECK (skill_level BETWEEN 1 AND 5),
    status          text        NOT NULL CHECK (status IN ('active', 'left', 'lapsed')),
    joined_on       date,
    ended_on        date,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX members_branch ON members (branch_id);

CREATE TABLE branches (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    region_code text        NOT NULL,
    city_code   text,
    kind        text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('active', 'merged', 'dissolved')),
    merged_into uuid,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- programmes and sessions
CREATE TABLE programmes (
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id               uuid PRIMARY KEY,
    name             text        NOT NULL,
    occupation       text        NOT NULL,
    target_level     smallint    NOT NULL CHECK (target_level BETWEEN 1 AND 5),
    provider_kind    text        NOT NULL,
    provider_name    text        NOT NULL,
    subsidy_category text        NOT NULL,
    sessions_count   integer     NOT NULL DEFAULT 0,   -- numbers the sessions: 第n期
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id               uuid PRIMARY KEY,
    programme_id     uuid        NOT NULL REFERENCES programmes (id),
    number           integer     NOT NULL CHECK (number >= 1),
    organiser_id     text        NOT NULL,
    organiser_kind   text        NOT NULL CHECK (organiser_kind IN ('branch', 'enterprise')),
    organiser_name   text,
    region_code      text        NOT NULL,
    city_code        text,
    subsidy_category text        NOT NULL,
    starts_on        date        NOT NULL,
    ends_on          date        NOT NULL CHECK (ends_on >= starts_on),
    capacity         integer     NOT NULL CHECK (capacity >= 1),
    -- enrolments that are not withdrawn; the CHECK is the last line of defence behind the row lock
    enrolled         integer     NOT NULL DEFAULT 0 CHECK (enrolled >= 0 AND enrolled <= capacity),
    status           text        NOT NULL DEFAULT 'scheduled'
                     CHECK (status IN ('scheduled', 'in_progress', 'completed', 'cancelled')),
    started_on       date,
    completed_on     date,
    cancelled_on     date,
    cancel_reason    text,
    person_times     integer,
    passed           integer,
    failed           integer,
    eligible_persons integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (programme_id, number)
);
CREATE INDEX sessions_region ON sessions (region_code);
CREATE INDEX sessions_completed ON sessions (completed_on) WHERE status = 'completed';

CREATE TABLE enrolments (
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id              uuid PRIMARY KEY,
    session_id      uuid        NOT NULL REFERENCES sessions (id),
    member_id       uuid        NOT NULL,
    branch_id       uuid,                   -- the member's branch when enrolled
    status          text        NOT NULL DEFAULT 'enrolled'
                    CHECK (status IN ('enrolled', 'attended', 'passed', 'failed', 'withdrawn')),
    closed          boolean     NOT NULL DEFAULT false,   -- set when the session completes or is cancelled
    withdraw_reason text,
    enrolled_at     timestamptz NOT NULL DEFAULT now(),
    attended_at     timestamptz,
    assessed_at     timestamptz,
    withdrawn_at    timestamptz
);
-- One live enrolment per member and session (a withdrawn member may enrol again).
CREATE UNIQUE INDEX enrolments_live ON enrolments (session_id, member_id) WHERE status <> 'withdrawn';
CREATE INDEX enrolments_member ON enrolments (member_id);

-- ---------------------------------------------------------------- certificates
CREATE TABLE certificates (
    seq           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id            uuid PRIMARY KEY,
    serial        text        NOT NULL UNIQUE,
    member_id     uuid        NOT NULL,
    enrolment_id  uuid        UNIQUE REFERENCES enrolments (id),
    session_id    uuid        REFERENCES sessions (id),
    programme_id  uuid        REFERENCES programmes (id),
    programme_name text,
    occupation    text        NOT NULL,
    level         smallint    NOT NULL CHECK (level BETWEEN 1 AND 5),
    issuer        text        NOT NULL,
    region_code   text        NOT NULL,
    city_code     text,
    issued_on     date        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificates_member ON certificates (member_id);

-- ---------------------------------------------------------------- competitions
CREATE TABLE competitions (
    seq           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id            uuid PRIMARY KEY,
    name          text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('labour', 'skills')),
    tier          text        NOT NULL CHECK (tier IN ('region', 'city', 'county', 'enterprise')),
    industry      text        NOT NULL,
    key_industry  boolean     NOT NULL,
    region_code   text        NOT NULL,
    city_code     text,
    starts_on     date        NOT NULL,
    ends_on       date        NOT NULL CHECK (ends_on >= starts_on),
    status        text        NOT NULL DEFAULT 'announced'
                  CHECK (status IN ('announced', 'held', 'results_published')),
    named         integer     NOT NULL DEFAULT 0 CHECK (named >= 0),
    reported      integer     NOT NULL DEFAULT 0 CHECK (reported >= 0),
    held_on       date,
    published_on  date,
    winners       jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX competitions_region ON competitions (region_code);

CREATE TABLE competition_members (
    competition_id uuid NOT NULL REFERENCES competitions (id),
    member_id      uuid NOT NULL,
    branch_id      uuid,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (competition_id, member_id)
);

CREATE TABLE competition_headcounts (
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    competition_id uuid    NOT NULL REFERENCES competitions (id),
    branch_id      uuid    NOT NULL,
    headcount      integer NOT NULL CHECK (headcount >= 1),
    reported_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX competition_headcounts_competition ON competition_headcounts (competition_id);

-- ---------------------------------------------------------------- studios and training bases
CREATE TABLE studios (
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id               uuid PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('innovation_studio', 'training_base', 'skill_master_studio')),
    name             text        NOT NULL,
    host_enterprise  text        NOT NULL,
    lead_worker      text        NOT NULL,
    lead_member_id   uuid,
    level            text        NOT NULL CHECK (level IN ('national', 'region', 'city')),
    industry         text        NOT NULL,
    key_industry     boolean     NOT NULL,
    region_code      text        NOT NULL,
    city_code        text,
    status           text        NOT NULL DEFAULT 'recognised' CHECK (status IN ('recognised', 'revoked')),
    recognised_on    date        NOT NULL,
    last_rating      text,
    last_evaluated_on date,
    revoked_on       date,
    revoke_reason    text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX studios_region ON studios (region_code);

CREATE TABLE studio_evaluations (
    studio_id    uuid NOT NULL REFERENCES studios (id),
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    rating       text NOT NULL CHECK (rating IN ('excellent', 'good', 'pass', 'fail')),
    evaluated_on date NOT NULL,
    notes        text,
    PRIMARY KEY (studio_id, seq)
);
