-- Lock accounts FOR NO KEY UPDATE, not FOR UPDATE: a balance change does not touch a key, and
-- FOR UPDATE would also block the FOR KEY SHARE locks that the foreign-key checks of other
-- transactions' journal lines take on the same rows (needless waits, and deadlocks with them).
CREATE OR REPLACE FUNCTION post_entry(p_kind text, p_fund uuid, p_grant uuid, p_reference uuid, p_memo text,
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
