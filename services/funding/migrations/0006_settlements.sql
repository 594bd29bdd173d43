-- A disbursement is settled when the bank reports the money paid out (a finance system's
-- finance.payment.settled.v1, through the intake): when, and under which bank serial. Once only: a second
-- report with the same serial changes nothing, another serial is refused (usecases.settle_disbursement).
ALTER TABLE disbursements
    ADD COLUMN settled_at     timestamptz,
    ADD COLUMN bank_reference text,
    ADD CONSTRAINT disbursement_settlement CHECK ((settled_at IS NULL) = (bank_reference IS NULL));
