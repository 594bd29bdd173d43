"""Stateful property test of the funding ledger with concurrent clients (hypothesis ``RuleBasedStateMachine``).

The real funding app (its lifespan: migrations, pool, outbox relay) runs on a fresh database on the test's
event loop; hypothesis drives it from a worker thread, each rule handing its coroutine to that loop. Rules open
funds, approve grants, pay disbursements several at once (``asyncio.gather``, some repeated with one
``Idempotency-Key``), revoke grants (also while payments race the revocation) and replay earlier requests. After
every step the invariants are checked in the database and through the API; at the end of each example the
events on ``funding.events``, read to the end offsets, are compared with the database.
"""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest
from aiokafka import TopicPartition
from funding_support import ledger_ok, running_funding
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shared.events import decode
from shared.kafka import read_to_end
from shared.money import fen_to_yuan, yuan_to_fen
from shared.topics import BY_NAME

pytestmark = pytest.mark.integration

TOPIC = "funding.events"
DISBURSED = "changai.funding.disbursement.made.v1"
APPROVED = "changai.funding.grant.approved.v1"
REVOKED = "changai.funding.grant.revoked.v1"
STEP_TIMEOUT_S = 120  # one rule's requests on a loaded 2-core machine; a bound, not a measurement

amounts = st.integers(min_value=1, max_value=40_000)  # fen, small against the funds so refusals happen often
payments_fen = st.integers(min_value=1, max_value=15_000)  # below most grants, so most payments pass and some do not
index = st.integers(min_value=0, max_value=1_000)


@dataclass
class FundModel:
    id: str
    total: int
    available: int
    committed: int = 0
    disbursed: int = 0


@dataclass
class GrantModel:
    id: str
    fund: FundModel
    remaining: int
    status: str = "open"
    payments: set[str] = field(default_factory=set)  # disbursement ids answered 201


@dataclass
class Context:
    loop: asyncio.AbstractEventLoop
    app: object
    client: object
    bootstrap: str
    stats: Counter = field(default_factory=Counter)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx
        self.pool = ctx.app.state.db
        self.funds: list[FundModel] = []
        self.grants: list[GrantModel] = []
        self.replayable: list[tuple] = []  # (path, body, key, status, answer) of accepted writes
        ctx.stats["examples"] += 1

    # -- plumbing: the app lives on the test's loop; hypothesis runs in a worker thread ---------------------
    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.ctx.loop).result(STEP_TIMEOUT_S)

    async def post(self, path: str, body: dict, key: str):
        return await self.ctx.client.post(path, json=body, headers={"Idempotency-Key": key})

    def accepted(self, path, body, key, resp) -> None:
        if resp.status_code < 300:
            self.replayable.append((path, body, key, resp.status_code, resp.json()))

    def pay_request(self, grant: GrantModel, amount: int) -> tuple[str, dict]:
        return f"/v1/grants/{grant.id}/disbursements", {"amount": fen_to_yuan(amount)}

    def settle_payments(self, groups: list[tuple[GrantModel, int, list]]) -> dict[str, int]:
        """Check each key's answers and book the payments in the model; returns fen paid per grant."""
        paid: dict[str, int] = {}
        for grant, amount, responses in groups:
            statuses = {r.status_code for r in responses}
            assert len(statuses) == 1 and statuses <= {201, 409}, [(r.status_code, r.text) for r in responses]
            if statuses == {201}:
                ids = {r.json()["id"] for r in responses}
                assert len(ids) == 1, f"one Idempotency-Key answered with {len(ids)} disbursements"
                fresh = [r for r in responses if r.headers.get("idempotent-replayed") != "true"]
                assert len(fresh) == 1, f"{len(fresh)} of {len(responses)} repeats ran the payment"
                (pid,) = ids
                assert pid not in grant.payments
                grant.payments.add(pid)
                paid[grant.id] = paid.get(grant.id, 0) + amount
                self.ctx.stats["paid"] += 1
                self.ctx.stats["replayed concurrently"] += len(responses) - 1
                path, body = self.pay_request(grant, amount)
                self.accepted(path, body, responses[0].request.headers["idempotency-key"], responses[0])
            else:
                self.ctx.stats["refused"] += 1
        return paid

    def book(self, grant: GrantModel, paid: int, released: int, status: str) -> None:
        grant.remaining -= paid + released
        grant.fund.committed -= paid + released
        grant.fund.disbursed += paid
        grant.fund.available += released
        grant.status = status

    # -- rules ----------------------------------------------------------------------------------------------
    @initialize(amount=st.integers(min_value=50_000, max_value=120_000))
    def first_fund(self, amount):
        self.open_fund(amount)

    @precondition(lambda self: len(self.funds) < 3)
    @rule(amount=st.integers(min_value=0, max_value=120_000))
    def open_fund(self, amount):
        body = {"name": "machine fund", "source_kind": "union_funds", "fiscal_year": 2021,
                "amount": fen_to_yuan(amount)}
        resp = self.run(self.post("/v1/funds", body, k := uuid.uuid4().hex))
        assert resp.status_code == 201, resp.text
        self.accepted("/v1/funds", body, k, resp)
        self.funds.append(FundModel(resp.json()["id"], amount, amount))

    @precondition(lambda self: self.funds)
    @rule(i=index, amounts_=st.lists(amounts, min_size=1, max_size=3))
    def approve_grants_at_once(self, i, amounts_):
        """Several approvals against one fund at once: exactly those the fund can afford in some order pass."""
        fund = self.funds[i % len(self.funds)]
        bodies = [{"fund_id": fund.id, "beneficiary_kind": "enterprise", "beneficiary_id": f"e-{n % 3}",
                   "beneficiary_name": "企业", "purpose": "machine", "amount": fen_to_yuan(a)}
                  for n, a in enumerate(amounts_)]
        keys = [uuid.uuid4().hex for _ in bodies]
        responses = self.run(_gather(*(self.post("/v1/grants", b, k) for b, k in zip(bodies, keys, strict=True))))
        taken = 0
        for amount, body, k, resp in zip(amounts_, bodies, keys, responses, strict=True):
            assert resp.status_code in (201, 409), resp.text
            if resp.status_code == 201:
                taken += amount
                self.accepted("/v1/grants", body, k, resp)
                self.grants.append(GrantModel(resp.json()["id"], fund, amount))
            else:  # refused only if it did not fit beside the ones that passed
                assert amount > fund.available - sum(
                    a for a, r in zip(amounts_, responses, strict=True) if r.status_code == 201)
        assert taken <= fund.available
        if sum(amounts_) <= fund.available:
            assert taken == sum(amounts_), "an approval the fund could afford was refused"
        fund.available -= taken
        fund.committed += taken

    @precondition(lambda self: self.grants)
    @rule(payments=st.lists(st.tuples(index, payments_fen, st.integers(min_value=1, max_value=3)), min_size=1,
                            max_size=4))
    def pay_at_once(self, payments):
        self.pay(payments)

    @precondition(lambda self: self.grants)
    @rule(payments=st.lists(st.tuples(index, payments_fen, st.integers(min_value=2, max_value=4)), min_size=2,
                            max_size=5))
    def pay_at_once_with_repeated_keys(self, payments):
        self.pay(payments)

    def pay(self, payments):
        """Payments at once, each sent 1-3 times with its own Idempotency-Key: each key pays at most once and
        a grant pays no more than it holds; when all of a grant's payments fit, all are paid."""
        groups, calls = [], []
        for i, amount, repeats in payments:
            grant = self.grants[i % len(self.grants)]
            path, body = self.pay_request(grant, amount)
            k = uuid.uuid4().hex
            groups.append((grant, amount, repeats))
            calls += [(path, body, k)] * repeats
        responses = iter(self.run(_gather(*(self.post(p, b, k) for p, b, k in calls))))
        settled = [(g, a, [next(responses) for _ in range(n)]) for g, a, n in groups]
        paid = self.settle_payments(settled)
        for grant in {g.id: g for g, _, _ in groups}.values():
            asked = sum(a for g, a, _ in groups if g is grant)
            if grant.status == "open" and asked <= grant.remaining:
                assert paid.get(grant.id, 0) == asked, "a payment the grant could afford was refused"
            got = paid.get(grant.id, 0)
            assert got <= grant.remaining
            self.book(grant, got, 0, "closed" if got == grant.remaining and got else grant.status)

    @precondition(lambda self: self.grants)
    @rule(i=index, payments=st.lists(payments_fen, min_size=0, max_size=3))
    def revoke_while_paying(self, i, payments):
        """A revocation racing payments on one grant: what is paid plus what is released is what it held."""
        grant = self.grants[i % len(self.grants)]
        revoke_key = uuid.uuid4().hex
        keys = [uuid.uuid4().hex for _ in payments]
        pays = [self.post(*self.pay_request(grant, a), k) for a, k in zip(payments, keys, strict=True)]
        revoke, *answers = self.run(_gather(self.post(f"/v1/grants/{grant.id}/revoke", {}, revoke_key), *pays))
        paid = self.settle_payments([(grant, a, [r]) for a, r in zip(payments, answers, strict=True)]).get(grant.id, 0)
        if revoke.status_code == 200:
            released = yuan_to_fen(revoke.json()["released_now"])
            assert grant.status == "open" and paid + released == grant.remaining, (paid, released, grant.remaining)
            self.accepted(f"/v1/grants/{grant.id}/revoke", {}, revoke_key, revoke)
            self.book(grant, paid, released, "revoked")
            self.ctx.stats["revoked"] += 1
        else:  # only a grant already closed or revoked, or emptied by the racing payments, cannot be revoked
            assert revoke.status_code == 409, revoke.text
            assert grant.status != "open" or paid == grant.remaining, (grant.status, paid, grant.remaining)
            self.book(grant, paid, 0, "closed" if grant.status == "open" else grant.status)

    @precondition(lambda self: self.replayable)
    @rule(i=index)
    def replay_later(self, i):
        """A stored answer comes back for a repeated key, and nothing changes (the invariants hold the model)."""
        path, body, k, status, first = self.replayable[i % len(self.replayable)]
        resp = self.run(self.post(path, body, k))
        assert (resp.status_code, resp.json()) == (status, first)
        assert resp.headers["idempotent-replayed"] == "true"
        self.ctx.stats["replayed later"] += 1

    # -- after every step ----------------------------------------------------------------------------------
    @invariant()
    def ledger_balances_and_nothing_below_zero(self):
        async def check():
            await ledger_ok(self.pool)
            return await self.pool.fetchval("SELECT count(*) FROM accounts WHERE kind <> 'source' AND balance < 0")

        assert self.run(check()) == 0

    @invariant()
    def funds_add_up_and_match_the_model(self):
        client = self.ctx.client
        views = self.run(_gather(*(client.get(f"/v1/funds/{f.id}") for f in self.funds)))
        for fund, resp in zip(self.funds, views, strict=True):
            v = {k: yuan_to_fen(resp.json()[k]) for k in ("total", "available", "committed", "disbursed")}
            assert v["available"] + v["committed"] + v["disbursed"] == v["total"], v
            assert v == {"total": fund.total, "available": fund.available, "committed": fund.committed,
                         "disbursed": fund.disbursed}, (v, fund)
        views = self.run(_gather(*(client.get(f"/v1/grants/{g.id}") for g in self.grants)))
        for grant, resp in zip(self.grants, views, strict=True):
            assert (yuan_to_fen(resp.json()["remaining"]), resp.json()["status"]) == (grant.remaining, grant.status)

    @invariant()
    def each_key_paid_once(self):
        """The disbursement rows are exactly the payments answered 201, one per Idempotency-Key."""
        ids = [g.id for g in self.grants]
        rows = self.run(self.pool.fetch(
            "SELECT id::text, grant_id::text FROM disbursements WHERE grant_id = ANY($1::uuid[])", ids))
        stored = Counter((r["grant_id"], r["id"]) for r in rows)
        assert all(n == 1 for n in stored.values())
        assert set(stored) == {(g.id, p) for g in self.grants for p in g.payments}

    # -- at the end of each example: Kafka against the database ----------------------------------------------
    def teardown(self):
        self.run(self.events_match_the_database())

    async def events_match_the_database(self):
        pool = self.pool
        async with asyncio.timeout(60):  # the app's relay publishes everything (poll 0.2 s, LISTEN/NOTIFY)
            while await pool.fetchval("SELECT count(*) FROM outbox_pending"):
                await asyncio.sleep(0.05)
        keys = {f.id for f in self.funds} | {g.id for g in self.grants}
        if not keys:
            return
        parts = [TopicPartition(TOPIC, p) for p in range(BY_NAME[TOPIC].partitions)]
        # Read to the end offsets taken now, after every row is marked sent: a duplicate is in this read.
        events = [decode(r.value) async for r in read_to_end(self.ctx.bootstrap, parts)
                  if r.key and r.key.decode() in keys]
        ids = Counter(e.id for e in events)
        assert all(n == 1 for n in ids.values()), f"event ids on Kafka more than once: {ids.most_common(3)}"
        queued = {str(r["event_id"]) for r in await pool.fetch(
            "SELECT event_id FROM outbox WHERE key = ANY($1::text[])", list(keys))}
        assert set(ids) == queued, "Kafka and the outbox disagree"
        rows = await pool.fetch("SELECT id::text FROM disbursements WHERE grant_id = ANY($1::uuid[])",
                                [g.id for g in self.grants])
        made = Counter(e.data["disbursement_id"] for e in events if e.type == DISBURSED)
        assert made == Counter(r["id"] for r in rows), "one disbursement.made per disbursement row"
        assert Counter(e.data["grant_id"] for e in events if e.type == APPROVED) == Counter(g.id for g in self.grants)
        revoked = await pool.fetch("SELECT id::text FROM grants WHERE status = 'revoked' AND id = ANY($1::uuid[])",
                                   [g.id for g in self.grants])
        assert Counter(e.data["grant_id"] for e in events if e.type == REVOKED) == Counter(r["id"] for r in revoked)
        self.ctx.stats["events checked on Kafka"] += len(events)


async def _gather(*aws):
    return await asyncio.gather(*aws)


async def test_concurrent_clients_keep_the_ledger_sound_and_kafka_matches_the_database(stack, make_database):
    dsn = await make_database("funding")
    async with running_funding(stack, dsn) as (app, client):
        ctx = Context(asyncio.get_running_loop(), app, client, stack.kafka.bootstrap)
        await asyncio.to_thread(
            run_state_machine_as_test, lambda: LedgerMachine(ctx),
            settings=settings(max_examples=8, stateful_step_count=12, deadline=None, print_blob=True,
                              suppress_health_check=list(HealthCheck),
                              # No shrinking: each example runs on the real servers, and shrinking would rerun
                              # dozens of them past the test's timeout; a failure prints its steps as they ran.
                              phases=[Phase.explicit, Phase.reuse, Phase.generate]))
    print(f"ledger machine: {dict(ctx.stats)}")
    # The machine did what it is for: paid, refused, repeated keys at once and checked events (not vacuous).
    assert ctx.stats["paid"] and ctx.stats["events checked on Kafka"]
