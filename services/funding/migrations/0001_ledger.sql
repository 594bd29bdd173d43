-- Funding: funds, grants and disbursements on a double-entry ledger; subsidy rules and claims.
--
-- The ledger: every movement of money is one journal entry whose lines sum to zero.
-- Accounts: one "budget source" per source kind (external, money comes from it: its
-- balance is <= 0), one per fund (its available money), one per grant (committed,
-- unpaid money) and one per beneficiary (money paid to it). Balances are the sum of
-- the lines; each account caches it in `balance`, kept by a trigger on the lines in
-- the same transaction, and the database refuses an overdraft (CHECK balance >= 0 on
-- fund, grant and beneficiary accounts), whatever the application does.

CREATE TABLE funds (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    source_kind text        NOT NULL CHECK (source_kind IN
                    ('central_budget', 'regional_budget', 'special_fund', 'union_funds', 'skills_account')),
    fiscal_year integer     NOT NULL CHECK (fiscal_year BETWEEN 2000 AND 2100),
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    opened_on   date        NOT NULL,
    closed_on   date,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX funds_source_year ON funds (source_kind, fiscal_year);

CREATE TABLE beneficiaries (
    kind        text        NOT NULL CHECK (kind IN ('project', 'studio', 'training_base', 'branch', 'enterprise')),
    id          text        NOT NULL,
    name        text        NOT NULL,
    region_code text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id)
);

CREATE TABLE grants (
    id               uuid PRIMARY KEY,
    fund_id          uuid        NOT NULL REFERENCES funds (id),
    beneficiary_kind text        NOT NULL,
    beneficiary_id   text        NOT NULL,
    beneficiary_name text        NOT NULL,   -- as approved
    purpose          text        NOT NULL,
    region_code      text,
    amount_fen       bigint      NOT NULL CHECK (amount_fen > 0),
    paid_fen         bigint      NOT NULL DEFAULT 0 CHECK (paid_fen >= 0),
    released_fen     bigint      NOT NULL DEFAULT 0 CHECK (released_fen >= 0),
    status           text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'revoked')),
    claim_id         uuid,                    -- set when the grant pays a training-subsidy claim
    approved_on      date        NOT NULL,
    closed_on        date,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT grant_within_amount CHECK (paid_fen + released_fen <= amount_fen),
    FOREIGN KEY (beneficiary_kind, beneficiary_id) REFERENCES beneficiaries (kind, id)
);
CREATE INDEX grants_fund ON grants (fund_id);
CREATE INDEX grants_beneficiary ON grants (beneficiary_kind, beneficiary_id);

CREATE TABLE accounts (
    id               bigserial PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('source', 'fund', 'grant', 'beneficiary')),
    source_kind      text,
    fund_id          uuid REFERENCES funds (id),
    grant_id         uuid REFERENCES grants (id),
    beneficiary_kind text,
    beneficiary_id   text,
    name             text        NOT NULL,
    balance          bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT account_owner CHECK (
        (kind = 'source' AND source_kind IS NOT NULL AND fund_id IS NULL AND grant_id IS NULL AND beneficiary_id IS NULL)
        OR (kind = 'fund' AND fund_id IS NOT NULL AND grant_id IS NULL AND beneficiary_id IS NULL AND source_kind IS NULL)
        OR (kind = 'grant' AND fund_id IS NOT NULL AND grant_id IS NOT NULL AND beneficiary_id IS NULL AND source_kind IS NULL)
        OR (kind = 'beneficiary' AND beneficiary_kind IS NOT NULL AND beneficiary_id IS NOT NULL
            AND fund_id IS NULL AND grant_id IS NULL AND source_kind IS NULL)),
    -- No fund, no grant and no beneficiary below zero: the database refuses the overdraft.
    CONSTRAINT account_no_overdraft CHECK (kind = 'source' OR balance >= 0),
    -- A budget source only gives: its balance is minus what it appropriated.
    CONSTRAINT source_only_gives CHECK (kind <> 'source' OR balance <= 0),
    FOREIGN KEY (beneficiary_kind, beneficiary_id) REFERENCES beneficiaries (kind, id)
);
CREATE UNIQUE INDEX accounts_source ON accounts (source_kind) WHERE kind = 'source';
CREATE UNIQUE INDEX accounts_fund ON accounts (fund_id) WHERE kind = 'fund';
CREATE UNIQUE INDEX accounts_grant ON accounts (grant_id) WHERE kind = 'grant';
CREATE UNIQUE INDEX accounts_beneficiary ON accounts (beneficiary_kind, beneficiary_id) WHERE kind = 'beneficiary';
CREATE INDEX accounts_grants_of_fund ON accounts (fund_id) WHERE kind = 'grant';

INSERT INTO accounts (kind, source_kind, name) VALUES
    ('source', 'central_budget', '中央预算内资金 central budget'),
    ('source', 'regional_budget', '自治区预算内资金 regional budget'),
    ('source', 'special_fund', '专项资金 special funds'),
    ('source', 'union_funds', '工会经费 union funds'),
    ('source', 'skills_account', '职业技能提升行动专账 skills-upgrading account');

CREATE TABLE journal_entries (
    id           bigserial PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN
                     ('fund_opened', 'fund_topped_up', 'fund_closed', 'grant_approved', 'grant_revoked', 'disbursement')),
    fund_id      uuid        NOT NULL REFERENCES funds (id),
    grant_id     uuid REFERENCES grants (id),
    reference    uuid,                       -- the disbursement or subsidy claim, when there is one
    memo         text,
    effective_on date        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX journal_entries_fund ON journal_entries (fund_id);

CREATE TABLE journal_lines (
    id         bigserial PRIMARY KEY,
    entry_id   bigint NOT NULL REFERENCES journal_entries (id),
    account_id bigint NOT NULL REFERENCES accounts (id),
    amount     bigint NOT NULL CHECK (amount <> 0)   -- + into the account, - out of it
);
CREATE INDEX journal_lines_account ON journal_lines (account_id, id);
CREATE INDEX journal_lines_entry ON journal_lines (entry_id);

-- Each line moves its account's cached balance in the same transaction; the CHECKs above
-- then refuse an overdraft at the statement that would cause it.
CREATE FUNCTION journal_line_applied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts SET balance = balance + NEW.amount WHERE id = NEW.account_id;
    RETURN NULL;
END $$;
CREATE TRIGGER journal_line_applied AFTER INSERT ON journal_lines
    FOR EACH ROW EXECUTE FUNCTION journal_line_applied();

-- At commit, every entry touched must have at least two lines summing to zero.
CREATE FUNCTION check_entry_balanced(p_entry bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_total numeric;
    v_lines integer;
BEGIN
    SELECT coalesce(sum(amount), 0), count(*) INTO v_total, v_lines FROM journal_lines WHERE entry_id = p_entry;
    IF v_total <> 0 OR v_lines < 2 THEN
        RAISE EXCEPTION 'journal entry % does not balance: % line(s) summing to %', p_entry, v_lines, v_total
            USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_entry_balanced';
    END IF;
END $$;
CREATE FUNCTION journal_line_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM check_entry_balanced(NEW.entry_id);
    RETURN NULL;
END $$;
CREATE FUNCTION journal_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM check_entry_balanced(NEW.id);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER journal_entry_balanced AFTER INSERT ON journal_lines
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_line_balanced();
CREATE CONSTRAINT TRIGGER journal_entry_has_lines AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_entry_balanced();

-- The ledger is append-only: a mistake is corrected by a new entry, never by editing one.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER journal_lines_append_only BEFORE UPDATE OR DELETE ON journal_lines
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- The one way the service writes the ledger: checks the entry balances, that no line
-- touches another fund's accounts, locks the accounts in id order (concurrent entries
-- never deadlock on them), then writes the entry and its lines.
-- Lock accounts FOR NO KEY UPDATE, not FOR UPDATE: a balance change does not touch a key, and
-- FOR UPDATE would also block the FOR KEY SHARE locks that the foreign-key checks of other
-- transactions' journal lines take on the same rows (needless waits, and deadlocks with them).
CREATE FUNCTION post_entry(p_kind text, p_fund uuid, p_grant uuid, p_reference uuid, p_memo text,
                                      p_on date, p_accounts bigint[], p_amounts bigint[])
    RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_entry bigint;
    v_total numeric;
BEGIN
    IF coalesce(cardinality(p_accounts), 0) < 2 OR cardinality(p_accounts) <> cardinality(p_amounts) THEN
        RAISE EXCEPTION 'a journal entry needs at least two lines and one amount per account'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT sum(a) INTO v_total FROM unnest(p_amounts) AS a;
    IF v_total <> 0 THEN
        RAISE EXCEPTION 'journal entry does not balance: lines sum to %', v_total
            USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_entry_balanced';
    END IF;
    IF EXISTS (SELECT 1 FROM accounts WHERE id = ANY (p_accounts) AND fund_id IS NOT NULL AND fund_id <> p_fund) THEN
        RAISE EXCEPTION 'journal entry of fund % touches another fund''s account', p_fund
            USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_entry_one_fund';
    END IF;
    PERFORM 1 FROM accounts WHERE id = ANY (p_accounts) ORDER BY id FOR NO KEY UPDATE;
    INSERT INTO journal_entries (kind, fund_id, grant_id, reference, memo, effective_on)
        VALUES (p_kind, p_fund, p_grant, p_reference, p_memo, p_on) RETURNING id INTO v_entry;
    INSERT INTO journal_lines (entry_id, account_id, amount)
        SELECT v_entry, t.account_id, t.amount FROM unnest(p_accounts, p_amounts) AS t (account_id, amount)
        ORDER BY t.account_id;
    RETURN v_entry;
END $$;

CREATE TABLE disbursements (
    id         uuid PRIMARY KEY,
    grant_id   uuid        NOT NULL REFERENCES grants (id),
    amount_fen bigint      NOT NULL CHECK (amount_fen > 0),
    paid_on    date        NOT NULL,
    memo       text,
    entry_id   bigint      NOT NULL REFERENCES journal_entries (id),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX disbursements_grant ON disbursements (grant_id, created_at);

-- Subsidy standards (补贴标准): category x effective-from date -> fen per person.
CREATE TABLE subsidy_rules (
    category       text        NOT NULL CHECK (category IN ('pre_job', 'skills_upgrade', 'new_form')),
    effective_from date        NOT NULL,
    rate_fen       bigint      NOT NULL CHECK (rate_fen >= 0),
    note           text,
    origin         text        NOT NULL DEFAULT 'api' CHECK (origin IN ('seed', 'api')),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (category, effective_from)
);

-- Which fund pays which category: for one year of completion, or for any year (year NULL).
CREATE TABLE subsidy_routes (
    category   text        NOT NULL CHECK (category IN ('pre_job', 'skills_upgrade', 'new_form')),
    year       integer CHECK (year BETWEEN 2000 AND 2100),
    fund_id    uuid        NOT NULL REFERENCES funds (id),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subsidy_route_unique UNIQUE NULLS NOT DISTINCT (category, year)
);

-- One claim per completed session, paid or rejected (a rejected claim can be retried).
CREATE TABLE subsidy_claims (
    id              uuid PRIMARY KEY,
    session_id      uuid        NOT NULL UNIQUE,
    event_id        uuid        NOT NULL,
    programme_id    uuid,
    programme_name  text,
    session_number  integer,
    organiser_id    text        NOT NULL,
    organiser_kind  text        NOT NULL,
    organiser_name  text,
    category        text        NOT NULL,
    region_code     text        NOT NULL,
    city_code       text,
    persons         integer     NOT NULL CHECK (persons >= 0),
    member_ids      uuid[]      NOT NULL DEFAULT '{}',
    completed_on    date        NOT NULL,
    rate_fen        bigint CHECK (rate_fen >= 0),
    amount_fen      bigint CHECK (amount_fen >= 0),
    status          text        NOT NULL CHECK (status IN ('paid', 'rejected')),
    reason          text,
    detail          text,
    fund_id         uuid REFERENCES funds (id),
    grant_id        uuid REFERENCES grants (id),
    disbursement_id uuid REFERENCES disbursements (id),
    attempts        integer     NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT claim_outcome CHECK ((status = 'paid' AND disbursement_id IS NOT NULL AND reason IS NULL)
                                    OR (status = 'rejected' AND reason IS NOT NULL AND disbursement_id IS NULL))
);
CREATE INDEX subsidy_claims_status ON subsidy_claims (status, created_at);
CREATE INDEX subsidy_claims_organiser ON subsidy_claims (organiser_kind, organiser_id);
