-- Many journal entries in one call, for the subsidy saga's batches: the same checks as post_entry
-- (each entry at least two lines summing to zero, no line on another fund's account), every account
-- of the batch locked at once in id order (so a batch and any single operation still take the
-- account locks in one order and never deadlock), then the entries and their lines in two
-- statements. Entry n's lines are those with p_line_entries = n (1-based); the entries' ids come
-- back in the given order. The balance trigger and the account CHECKs apply to each line as in
-- post_entry: a batch that would overdraw any account fails as a whole.
CREATE FUNCTION post_entries(p_kinds text[], p_funds uuid[], p_grants uuid[], p_references uuid[], p_memos text[],
                             p_on date[], p_line_entries integer[], p_accounts bigint[], p_amounts bigint[])
    RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := coalesce(cardinality(p_kinds), 0);
    v_ids bigint[];
BEGIN
    IF v_n = 0 THEN
        RETURN '{}';
    END IF;
    IF cardinality(p_funds) <> v_n OR cardinality(p_grants) <> v_n OR cardinality(p_references) <> v_n
       OR cardinality(p_memos) <> v_n OR cardinality(p_on) <> v_n
       OR cardinality(p_line_entries) <> cardinality(p_accounts)
       OR cardinality(p_accounts) <> cardinality(p_amounts)
       OR EXISTS (SELECT 1 FROM unnest(p_line_entries) AS e WHERE e IS NULL OR e < 1 OR e > v_n) THEN
        RAISE EXCEPTION 'post_entries: one value per entry, and one entry (1..%) per line', v_n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM generate_series(1, v_n) AS e (n)
                 LEFT JOIN unnest(p_line_entries, p_amounts) AS l (n, amount) USING (n)
                GROUP BY e.n HAVING count(l.amount) < 2 OR coalesce(sum(l.amount), 0) <> 0) THEN
        RAISE EXCEPTION 'journal entry does not balance (or has fewer than two lines)'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_entry_balanced';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_line_entries, p_accounts) AS l (n, account_id)
                 JOIN accounts a ON a.id = l.account_id
                WHERE a.fund_id IS NOT NULL AND a.fund_id <> p_funds[l.n]) THEN
        RAISE EXCEPTION 'a journal entry touches another fund''s account'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_entry_one_fund';
    END IF;
    PERFORM 1 FROM accounts WHERE id = ANY (p_accounts) ORDER BY id FOR NO KEY UPDATE;
    v_ids := ARRAY(SELECT nextval(pg_get_serial_sequence('journal_entries', 'id')) FROM generate_series(1, v_n));
    INSERT INTO journal_entries (id, kind, fund_id, grant_id, reference, memo, effective_on)
        SELECT v_ids[t.n], t.kind, t.fund_id, t.grant_id, t.reference, t.memo, t.effective_on
          FROM unnest(p_kinds, p_funds, p_grants, p_references, p_memos, p_on)
               WITH ORDINALITY AS t (kind, fund_id, grant_id, reference, memo, effective_on, n)
         ORDER BY t.n;
    -- Entry by entry, and within an entry by account id (as post_entry): the balance trigger then
    -- moves the accounts in the order the entries say (money in before it goes out again).
    INSERT INTO journal_lines (entry_id, account_id, amount)
        SELECT v_ids[l.n], l.account_id, l.amount
          FROM unnest(p_line_entries, p_accounts, p_amounts) AS l (n, account_id, amount)
         ORDER BY l.n, l.account_id;
    RETURN v_ids;
END $$;

-- The cached balances move once per statement and account instead of once per line: a batch's
-- thousands of lines on one fund's account were as many updates of one row (each a new row version
-- to walk past). The net of the statement's lines per account is added; the account CHECKs refuse
-- the statement when an account would end it below zero (post_entry inserts one entry per
-- statement, so for it nothing changes; a batch fails as a whole). An account whose lines net to
-- zero in the statement (a subsidy grant's, paid at once) keeps its balance untouched.
DROP TRIGGER journal_line_applied ON journal_lines;
DROP FUNCTION journal_line_applied();
CREATE FUNCTION journal_lines_applied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a SET balance = a.balance + l.total
      FROM (SELECT account_id, sum(amount) AS total FROM new_lines GROUP BY account_id) l
     WHERE a.id = l.account_id AND l.total <> 0;
    RETURN NULL;
END $$;
CREATE TRIGGER journal_lines_applied AFTER INSERT ON journal_lines REFERENCING NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION journal_lines_applied();
