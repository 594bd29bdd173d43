"""Idempotency-Key on the keyed write path of ``shared.http.write``: the key, its scope and the first answer
travel to PostgreSQL as SQL literals (with BEGIN and COMMIT, to save their round trips), so keys made of
quotes, backslashes and SQL must still be stored and matched exactly, never executed."""
import pytest

from funding_support import approve, events_in_outbox, open_fund

pytestmark = pytest.mark.integration

HOSTILE_KEYS = [
    "it's",
    "''",
    "\\",
    "\\x27; SELECT 1",
    "x'); DELETE FROM idempotency_keys; --",
    "k'; COMMIT; UPDATE grants SET amount_fen = 0; --",
    "$$; ROLLBACK; $$",
    "résumé",
    "E'\\''",
]


@pytest.mark.parametrize("idem", HOSTILE_KEYS)
async def test_a_hostile_key_is_stored_and_matched_exactly(funding, idem):
    app, client, _ = funding
    fund = await open_fund(client, "100.00")
    grant = await approve(client, fund["id"], "100.00")
    path = f"/v1/grants/{grant['id']}/disbursements"
    headers = {"Idempotency-Key": idem.encode("latin-1")}  # as sent on the wire (a header's bytes are latin-1)

    first = await client.post(path, json={"amount": "1.00"}, headers=headers)
    again = await client.post(path, json={"amount": "1.00"}, headers=headers)
    other = await client.post(path, json={"amount": "2.00"}, headers=headers)

    assert first.status_code == 201, first.text
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-key-reused")
    assert (await client.get(f"/v1/grants/{grant['id']}")).json()["paid"] == "1.00"
    async with app.state.db.acquire() as conn:
        stored = await conn.fetchval("SELECT key FROM idempotency_keys WHERE key = $1", idem)
    assert stored == idem
    assert (await events_in_outbox(app.state.db, grant["id"])).count("changai.funding.disbursement.made.v1") == 1


async def test_a_refused_keyed_write_keeps_neither_key_nor_change_and_the_connection_is_clean(funding):
    app, client, _ = funding
    fund = await open_fund(client, "10.00")
    grant = await approve(client, fund["id"], "10.00")
    path = f"/v1/grants/{grant['id']}/disbursements"
    headers = {"Idempotency-Key": "refused-then-retried"}

    refused = await client.post(path, json={"amount": "11.00"}, headers=headers)
    assert refused.status_code == 409
    async with app.state.db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", headers["Idempotency-Key"]) == 0
    # the pool's connections were released in no transaction: every later write works, once each
    for _ in range(2 * app.state.db.get_max_size()):
        assert (await client.post(path, json={"amount": "0.01"}, headers={"Idempotency-Key": f"k{_}"})).status_code == 201
    retried = await client.post(path, json={"amount": "5.00"}, headers=headers)
    assert retried.status_code == 201 and retried.headers.get("idempotent-replayed") is None
    assert (await client.get(f"/v1/grants/{grant['id']}")).json()["paid"] == "5.20"
