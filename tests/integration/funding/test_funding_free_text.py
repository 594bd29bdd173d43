"""Free text a user types (purposes, memos, notes, reasons, names) is scrubbed of ID and phone numbers before
it enters an event or the append-only journal (issue 12 item 7, issue 15 item 5)."""
import pytest

from funding_support import approve, key, open_fund

pytestmark = pytest.mark.integration

PHONE, ID_NUMBER = "138-1234-5678", "640104199001018143"
TYPED = f"联系人 {PHONE}，身份证 {ID_NUMBER}"


async def test_phone_and_id_numbers_in_free_text_never_reach_an_event_or_the_journal(funding):
    app, client, _ = funding
    fund = await open_fund(client, "1000.00", name=f"资金 {PHONE}")
    grant = await approve(client, fund["id"], "500.00", name=f"张三 {PHONE}")
    resp = await client.post("/v1/grants", headers=key(), json={
        "fund_id": fund["id"], "beneficiary_kind": "studio", "beneficiary_id": "studio-free-text",
        "beneficiary_name": "创新工作室", "purpose": TYPED, "amount": "100.00"})
    assert resp.status_code == 201 and resp.json()["purpose"] == "联系人 [phone]，身份证 [id-number]", resp.text
    paid = await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "1.00", "memo": TYPED},
                             headers=key())
    assert paid.status_code == 201 and PHONE not in paid.json()["memo"], paid.text
    assert (await client.post(f"/v1/funds/{fund['id']}/top-ups", json={"amount": "1.00", "note": TYPED},
                              headers=key())).status_code == 200
    assert (await client.post(f"/v1/grants/{grant['id']}/revoke", json={"reason": TYPED},
                              headers=key())).status_code == 200

    pool = app.state.db
    values = [bytes(r["value"]).decode() for r in await pool.fetch(
        "SELECT value FROM outbox WHERE key = ANY ($1::text[])", [fund["id"], grant["id"], resp.json()["id"]])]
    assert len(values) >= 5
    memos = [r["memo"] or "" for r in await pool.fetch("SELECT memo FROM journal_entries WHERE fund_id = $1",
                                                       fund["id"])]
    stored = [*values, *memos, *(r["purpose"] + r["beneficiary_name"] for r in await pool.fetch(
        "SELECT purpose, beneficiary_name FROM grants WHERE fund_id = $1", fund["id"]))]
    for text in stored:
        assert "1234-5678" not in text and ID_NUMBER not in text, text
    assert any("[phone]" in m for m in memos) and any("[id-number]" in v for v in values)
