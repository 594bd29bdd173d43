-- A payment in one round trip: lock the grant (only within the caller's regions), read it and its
-- balance in a new statement (a volatile function's statements each see a fresh snapshot, so the
-- balance is the one the lock protects), refuse or post the entry through post_entry, record the
-- disbursement and the grant's paid amount. The account CHECKs still refuse any overdraft; the
-- explicit balance test only lets a refusal carry the balance without a savepoint.
CREATE FUNCTION pay_grant(p_grant uuid, p_amount bigint, p_on date, p_memo text, p_disbursement uuid,
                          p_reference uuid, p_regions text[])
    RETURNS TABLE (outcome text, fund_id uuid, region_code text, source_kind text, fiscal_year integer,
                   beneficiary_kind text, beneficiary_id text, account_id bigint, status text,
                   remaining_fen bigint, entry_id bigint)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g record;
    v_entry bigint;
    v_status text;
BEGIN
    PERFORM 1 FROM grants WHERE id = p_grant AND (p_regions IS NULL OR grants.region_code = ANY (p_regions))
        FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found', NULL::uuid, NULL, NULL, NULL::integer, NULL, NULL, NULL::bigint, NULL,
                            NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    SELECT gr.fund_id, gr.region_code, gr.beneficiary_kind, gr.beneficiary_id, gr.status, gr.paid_fen,
           gr.released_fen, gr.amount_fen, a.id AS account_id, a.balance, f.source_kind, f.fiscal_year,
           b.id AS payee_account
      INTO g
      FROM grants gr JOIN accounts a ON a.kind = 'grant' AND a.grant_id = gr.id
      JOIN funds f ON f.id = gr.fund_id
      JOIN accounts b ON b.kind = 'beneficiary' AND b.beneficiary_kind = gr.beneficiary_kind
                     AND b.beneficiary_id = gr.beneficiary_id
     WHERE gr.id = p_grant;
    IF g.status <> 'open' OR g.balance < p_amount THEN
        RETURN QUERY SELECT CASE WHEN g.status <> 'open' THEN 'not_open' ELSE 'insufficient' END, g.fund_id,
                            g.region_code, g.source_kind, g.fiscal_year, g.beneficiary_kind, g.beneficiary_id,
                            g.account_id, g.status, g.balance, NULL::bigint;
        RETURN;
    END IF;
    v_entry := post_entry('disbursement', g.fund_id, p_grant, coalesce(p_reference, p_disbursement), p_memo, p_on,
                          ARRAY[g.account_id, g.payee_account], ARRAY[-p_amount, p_amount]);
    INSERT INTO disbursements (id, grant_id, amount_fen, paid_on, memo, entry_id)
        VALUES (p_disbursement, p_grant, p_amount, p_on, p_memo, v_entry);
    UPDATE grants SET paid_fen = paid_fen + p_amount,
                      status = CASE WHEN paid_fen + p_amount + released_fen = amount_fen THEN 'closed' ELSE grants.status END,
                      closed_on = CASE WHEN paid_fen + p_amount + released_fen = amount_fen THEN p_on ELSE closed_on END
     WHERE id = p_grant RETURNING grants.status INTO v_status;
    RETURN QUERY SELECT 'paid', g.fund_id, g.region_code, g.source_kind, g.fiscal_year, g.beneficiary_kind,
                        g.beneficiary_id, g.account_id, v_status, g.balance - p_amount, v_entry;
END $$;
