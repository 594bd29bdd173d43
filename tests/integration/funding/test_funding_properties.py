"""Property-based: random sequences of fund / grant / disbursement operations through the HTTP API, each
checked against a simple model of the money and followed by the ledger's invariants (checked in the database)."""
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funding_support import ledger_ok
from shared.money import fen_to_yuan

pytestmark = pytest.mark.integration


@dataclass
class FundModel:
    id: str
    total: int
    available: int
    committed: int = 0
    disbursed: int = 0
    open: bool = True


@dataclass
class GrantModel:
    id: str
    fund: FundModel
    remaining: int
    paid: int = 0
    status: str = "open"


@dataclass
class Model:
    funds: list[FundModel] = field(default_factory=list)
    grants: list[GrantModel] = field(default_factory=list)
    replayable: list[tuple] = field(default_factory=list)  # (method, path, body, key, status, response)


amounts = st.integers(min_value=1, max_value=60_000)  # fen: small, so overdrafts happen often
index = st.integers(min_value=0, max_value=1_000)
operation = st.one_of(
    st.tuples(st.just("open"), st.integers(min_value=0, max_value=100_000)),
    st.tuples(st.just("top_up"), index, amounts),
    st.tuples(st.just("approve"), index, amounts),
    st.tuples(st.just("disburse"), index, amounts),
    st.tuples(st.just("revoke"), index),
    st.tuples(st.just("close"), index),
    st.tuples(st.just("replay"), index),
)


async def apply(client, model: Model, op: tuple) -> None:
    kind = op[0]
    k = uuid.uuid4().hex

    async def post(path, body, expect):
        resp = await client.post(path, json=body, headers={"Idempotency-Key": k})
        assert resp.status_code == expect, (op, resp.status_code, resp.text)
        if resp.status_code < 300:
            # Only accepted writes are replayed: a refusal rolls its key back, so a retry runs again against
            # the state *then* (a close refused while a grant was open succeeds once the grant is revoked).
            model.replayable.append((path, body, k, resp.status_code, resp.json()))
        return resp.json()

    if kind == "open":
        body = await post("/v1/funds", {"name": "property fund", "source_kind": "union_funds", "fiscal_year": 2021,
                                        "amount": fen_to_yuan(op[1])}, 201)
        model.funds.append(FundModel(body["id"], op[1], op[1]))
    elif kind == "top_up" and model.funds:
        fund = model.funds[op[1] % len(model.funds)]
        await post(f"/v1/funds/{fund.id}/top-ups", {"amount": fen_to_yuan(op[2])}, 200 if fund.open else 409)
        if fund.open:
            fund.total += op[2]
            fund.available += op[2]
    elif kind == "approve" and model.funds:
        fund = model.funds[op[1] % len(model.funds)]
        ok = fund.open and op[2] <= fund.available
        body = await post("/v1/grants", {"fund_id": fund.id, "beneficiary_kind": "enterprise",
                                         "beneficiary_id": f"e-{op[1] % 3}", "beneficiary_name": "企业",
                                         "purpose": "property", "amount": fen_to_yuan(op[2])}, 201 if ok else 409)
        if ok:
            fund.available -= op[2]
            fund.committed += op[2]
            model.grants.append(GrantModel(body["id"], fund, op[2]))
        elif fund.open:
            assert body["balance"] == fen_to_yuan(fund.available)
    elif kind == "disburse" and model.grants:
        grant = model.grants[op[1] % len(model.grants)]
        ok = grant.status == "open" and op[2] <= grant.remaining
        body = await post(f"/v1/grants/{grant.id}/disbursements", {"amount": fen_to_yuan(op[2])}, 201 if ok else 409)
        if ok:
            grant.remaining -= op[2]
            grant.paid += op[2]
            grant.fund.committed -= op[2]
            grant.fund.disbursed += op[2]
            grant.status = "closed" if grant.remaining == 0 else "open"
            assert body["grant_remaining"] == fen_to_yuan(grant.remaining)
        else:
            assert body["balance"] == fen_to_yuan(grant.remaining)
    elif kind == "revoke" and model.grants:
        grant = model.grants[op[1] % len(model.grants)]
        ok = grant.status == "open"
        await post(f"/v1/grants/{grant.id}/revoke", {}, 200 if ok else 409)
        if ok:
            grant.fund.committed -= grant.remaining
            grant.fund.available += grant.remaining
            grant.remaining, grant.status = 0, "revoked"
    elif kind == "close" and model.funds:
        fund = model.funds[op[1] % len(model.funds)]
        ok = fund.open and fund.committed == 0
        await post(f"/v1/funds/{fund.id}/close", {}, 200 if ok else 409)
        if ok:
            fund.total -= fund.available
            fund.available, fund.open = 0, False
    elif kind == "replay" and model.replayable:
        path, body, key, status, first = model.replayable[op[1] % len(model.replayable)]
        resp = await client.post(path, json=body, headers={"Idempotency-Key": key})
        # A stored answer is replayed, and nothing changes (the check after each step holds the model).
        assert (resp.status_code, resp.json()) == (status, first)
        assert resp.headers["idempotent-replayed"] == "true"


async def check(client, pool, model: Model) -> None:
    for fund in model.funds:
        view = (await client.get(f"/v1/funds/{fund.id}")).json()
        assert (view["total"], view["available"], view["committed"], view["disbursed"], view["status"]) == (
            fen_to_yuan(fund.total), fen_to_yuan(fund.available), fen_to_yuan(fund.committed),
            fen_to_yuan(fund.disbursed), "open" if fund.open else "closed")
    for grant in model.grants:
        view = (await client.get(f"/v1/grants/{grant.id}")).json()
        assert (view["remaining"], view["paid"], view["status"]) == (
            fen_to_yuan(grant.remaining), fen_to_yuan(grant.paid), grant.status)
    await ledger_ok(pool)


@settings(max_examples=25, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=15))
async def test_random_operations_keep_the_money_exact_and_the_ledger_sound(funding, ops):
    app, client, _ = funding
    model = Model()
    for op in [("open", 50_000)] + ops:
        await apply(client, model, op)
        await check(client, app.state.db, model)
