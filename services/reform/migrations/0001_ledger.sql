-- Reform coordination (改革协调): the coordinating office's task ledger (任务台账), the
-- coordination group's member units and their liaison officers, policy documents, pilots
-- and city implementation plans.

CREATE TABLE units (
    id                  uuid PRIMARY KEY,
    name                text        NOT NULL UNIQUE,
    kind                text        NOT NULL CHECK (kind IN ('party', 'congress', 'government', 'mass_organisation', 'other')),
    liaison_name        text,
    liaison_phone       bytea,      -- AES-256-GCM (shared.crypto), never in clear
    liaison_phone_masked text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE years (
    year       integer PRIMARY KEY CHECK (year BETWEEN 2000 AND 2100),
    status     text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    opened_on  date        NOT NULL,
    closed_on  date,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The member units of a year's ledger: a task's lead unit must be one of them.
CREATE TABLE year_units (
    year    integer NOT NULL REFERENCES years (year),
    unit_id uuid    NOT NULL REFERENCES units (id),
    PRIMARY KEY (year, unit_id)
);

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    year             integer     NOT NULL REFERENCES years (year),
    number           integer     NOT NULL CHECK (number >= 1),
    title            text        NOT NULL,
    content          text        NOT NULL DEFAULT '',
    measures         text        NOT NULL DEFAULT '',
    source_clause    text        NOT NULL DEFAULT '',
    lead_unit_id     uuid        NOT NULL REFERENCES units (id),
    co_unit_ids      uuid[]      NOT NULL DEFAULT '{}',
    deadline         date        NOT NULL,
    status           text        NOT NULL DEFAULT 'assigned'
                         CHECK (status IN ('assigned', 'in_progress', 'completion_reported', 'completed')),
    percent          integer     NOT NULL DEFAULT 0 CHECK (percent BETWEEN 0 AND 100),
    completed_on     date,
    last_report_at   timestamptz,
    -- Supervision stages already told, so a reminder never repeats for the same task and stage:
    -- the deadline an overdue notice was sent for (a new deadline is a new stage), and the
    -- report time a "progress due" reminder was sent after (a new report starts a new quiet spell).
    overdue_for      date,
    progress_due_for timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    seq              bigserial   NOT NULL UNIQUE,
    UNIQUE (year, number)
);
CREATE INDEX tasks_lead ON tasks (lead_unit_id);
CREATE INDEX tasks_open_deadline ON tasks (deadline) WHERE status <> 'completed';

-- Every change of a task, in order: assignments, re-assignments, reports, verifications, send-backs.
CREATE TABLE task_history (
    seq      bigserial PRIMARY KEY,
    task_id  uuid        NOT NULL REFERENCES tasks (id),
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text        NOT NULL,
    action   text        NOT NULL,
    unit_id  uuid,
    percent  integer,
    text     text        NOT NULL DEFAULT '',
    links    text[]      NOT NULL DEFAULT '{}',
    detail   jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX task_history_task ON task_history (task_id, seq);

CREATE TABLE documents (
    id          uuid PRIMARY KEY,
    unit_id     uuid        NOT NULL REFERENCES units (id),
    title       text        NOT NULL,
    doc_number  text        NOT NULL,
    issued_on   date        NOT NULL,
    task_ids    uuid[]      NOT NULL DEFAULT '{}',
    link        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    seq         bigserial   NOT NULL UNIQUE,
    UNIQUE (unit_id, doc_number)
);

CREATE TABLE pilots (
    id                  uuid PRIMARY KEY,
    year                integer     NOT NULL CHECK (year BETWEEN 2000 AND 2100),
    kind                text        NOT NULL CHECK (kind IN ('city', 'industry', 'county', 'enterprise')),
    mode                text        NOT NULL CHECK (mode IN ('comprehensive', 'project')),
    name                text        NOT NULL,
    region_code         text        NOT NULL,
    content             text        NOT NULL DEFAULT '',
    responsible_unit_id uuid REFERENCES units (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    seq                 bigserial   NOT NULL UNIQUE,
    UNIQUE (year, kind, name)
);

CREATE TABLE city_plans (
    id          uuid PRIMARY KEY,
    city_code   text        NOT NULL UNIQUE,
    title       text        NOT NULL,
    doc_number  text,
    issued_on   date        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
