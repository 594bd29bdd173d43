"""Funding's use cases: one async function per command (and per read), called by the HTTP routes,
the subsidy consumer and any bulk path alike.

Each takes the connection (the caller's transaction), the command, the actor (a ``Principal``) and,
where a date defaults to today, today's date in China. It authorises with the one region rule
(out of scope: 404 on a read or a write addressed by id, 403 on a write naming a region; lists cut
to the scope; region-wide settings need a region-level token with ``funding:admin``), decides with
``domain``, writes with ``store`` and queues its events in the outbox, and returns the result.
Refusals are ``shared.errors`` exceptions.

Locks are taken in one order — fund row, then grant row, then (inside the database's
``post_entry``) the accounts by id. Whether money suffices is decided by the database: a fund or
grant account's ``CHECK (balance >= 0)`` refuses the overdraft, and the refusal becomes a 409
``insufficient-funds`` carrying the balance.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter as Tally
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.funding import domain, store
from shared.auth import Principal
from shared.clock import CHINA
from shared.errors import Invalid, NotFound
from shared.events.funding import (
    DisbursementSettled,
    FundClosed,
    FundOpened,
    FundsDisbursed,
    FundToppedUp,
    GrantApproved,
    GrantRevoked,
    SubsidyClaimed,
    SubsidyPaid,
    SubsidyRejected,
)
from shared.events.training import SessionCompleted
from shared.outbox import add_traced, emit
from shared.privacy import scrub_text
from shared.regions import REGION_ROOT

CLAIMS = Counter(
    "changai_funding_subsidy_claims_total",
    "Subsidy claims settled (retries included)",
    ["category", "outcome", "reason"],
)
REFUSED = Counter(
    "changai_funding_overdrafts_refused_total", "Grants and payments the ledger refused for lack of money", ["account"]
)

# The subsidy saga acts for the federation: its grants go to the region the training event names.
SAGA = Principal("funding.subsidy-saga", frozenset({"funding:write", domain.ADMIN_SCOPE}), REGION_ROOT)


async def _post_within(
    conn: asyncpg.Connection,
    account_kind: str,
    debited_account: int,
    amount_fen: int,
    kind: str,
    fund_id: uuid.UUID,
    lines: list[tuple[int, int]],
    **kw: Any,
) -> int:
    """Post an entry that takes ``amount_fen`` out of ``debited_account``; its CHECK refuses an overdraft."""
    try:
        async with conn.transaction():  # a savepoint: after a refusal the transaction can still read the balance
            return await store.post_entry(conn, kind, fund_id, lines, **kw)
    except asyncpg.CheckViolationError as exc:
        if exc.constraint_name != "account_no_overdraft":
            raise
        REFUSED.labels(account_kind).inc()
        raise domain.insufficient(
            account_kind, debited_account, await store.account_balance(conn, debited_account), amount_fen
        ) from None


# -- funds (region-wide: funding:admin and a region-level token) -------------------------------
async def open_fund(conn: asyncpg.Connection, cmd: domain.FundIn, actor: Principal, today: date) -> uuid.UUID:
    domain.ensure_admin(actor)
    fund_id = uuid.uuid4()
    on = cmd.opened_on or today
    fund_account = await store.insert_fund(conn, fund_id, cmd.name, cmd.source_kind.value, cmd.fiscal_year, on)
    if cmd.amount > 0:
        source = await store.source_account(conn, cmd.source_kind.value)
        await store.post_entry(
            conn,
            "fund_opened",
            fund_id,
            [(source, -cmd.amount), (fund_account, cmd.amount)],
            on=on,
            memo=f"opened: {cmd.name}",
        )
    await emit(
        conn,
        FundOpened(
            fund_id=fund_id,
            name=cmd.name,
            source_kind=cmd.source_kind,
            fiscal_year=cmd.fiscal_year,
            amount_fen=cmd.amount,
            region_code=REGION_ROOT,
        ),
    )
    return fund_id


async def _open_fund_locked(conn: asyncpg.Connection, fund_id: uuid.UUID) -> asyncpg.Record:
    fund = await store.lock_fund(conn, fund_id)
    if fund is None:
        raise NotFound("fund", fund_id)
    if fund["status"] != "open":
        raise domain.fund_closed(fund_id, fund["closed_on"])
    return fund


async def top_up(
    conn: asyncpg.Connection, fund_id: uuid.UUID, cmd: domain.TopUpIn, actor: Principal, today: date
) -> None:
    domain.ensure_admin(actor)
    fund = await _open_fund_locked(conn, fund_id)
    source = await store.source_account(conn, fund["source_kind"])
    await store.post_entry(
        conn,
        "fund_topped_up",
        fund_id,
        [(source, -cmd.amount), (fund["account_id"], cmd.amount)],
        on=today,
        memo=cmd.note or "top-up",
    )
    total = store.figures_of((await store.fund_figures(conn, [fund_id]))[0]).total_fen
    await emit(
        conn,
        FundToppedUp(
            fund_id=fund_id,
            source_kind=fund["source_kind"],
            fiscal_year=fund["fiscal_year"],
            amount_fen=cmd.amount,
            total_fen=total,
            region_code=REGION_ROOT,
        ),
    )


async def close_fund(
    conn: asyncpg.Connection, fund_id: uuid.UUID, cmd: domain.CloseIn, actor: Principal, today: date
) -> int:
    """Returns the unspent money to its budget source; refused while grants hold unpaid money."""
    domain.ensure_admin(actor)
    fund = await _open_fund_locked(conn, fund_id)
    committed = await store.committed(conn, fund_id)
    if committed:
        raise domain.fund_has_commitments(fund_id, committed)
    unspent = fund["available_fen"]
    if unspent:
        source = await store.source_account(conn, fund["source_kind"])
        await store.post_entry(
            conn,
            "fund_closed",
            fund_id,
            [(fund["account_id"], -unspent), (source, unspent)],
            on=today,
            memo=cmd.reason or "closed: unspent money returned",
        )
    await store.close_fund(conn, fund_id, today)
    await emit(
        conn,
        FundClosed(
            fund_id=fund_id,
            source_kind=fund["source_kind"],
            fiscal_year=fund["fiscal_year"],
            unspent_fen=unspent,
            region_code=REGION_ROOT,
        ),
    )
    return unspent


async def get_fund(conn, fund_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    """Funds are the federation's books: every funding reader may see them (a city grants from them)."""
    rows = await store.fund_figures(conn, [fund_id])
    if not rows:
        raise NotFound("fund", fund_id)
    return rows[0]


async def list_funds(
    conn, actor: Principal, *, source_kind: str | None, fiscal_year: int | None, after: tuple | None, limit: int
) -> list[asyncpg.Record]:
    return await store.fund_figures(conn, None, source_kind, fiscal_year, after=after, limit=limit + 1)


# -- grants and disbursements (regional: the grant's region within the caller's scope) -------------
async def approve_grant(conn: asyncpg.Connection, cmd: domain.GrantIn, actor: Principal, today: date) -> uuid.UUID:
    kind = cmd.beneficiary_kind.value
    place = await _payee_place(conn, kind, cmd.beneficiary_id, actor, cmd.region_code)
    region = domain.grant_region(actor, cmd.region_code, place)
    return await _approve(
        conn,
        fund_id=cmd.fund_id,
        beneficiary_kind=kind,
        beneficiary_id=cmd.beneficiary_id,
        beneficiary_name=cmd.beneficiary_name,
        purpose=cmd.purpose,
        region_code=region,
        amount_fen=cmd.amount,
        on=cmd.approved_on or today,
    )


async def _approve(
    conn: asyncpg.Connection,
    *,
    fund_id: uuid.UUID,
    beneficiary_kind: str,
    beneficiary_id: str,
    beneficiary_name: str,
    purpose: str,
    region_code: str,
    amount_fen: int,
    on: date,
    claim_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None,
) -> uuid.UUID:
    fund = await store.lock_fund(conn, fund_id)
    if fund is None:
        raise Invalid("fund_id", "no such fund")
    if fund["status"] != "open":
        raise domain.fund_closed(fund_id, fund["closed_on"])
    await store.upsert_beneficiary(conn, beneficiary_kind, beneficiary_id, beneficiary_name, region_code)
    grant_id = uuid.uuid4()
    grant_account = await store.insert_grant(
        conn,
        grant_id=grant_id,
        fund_id=fund_id,
        beneficiary_kind=beneficiary_kind,
        beneficiary_id=beneficiary_id,
        beneficiary_name=beneficiary_name,
        purpose=purpose,
        region_code=region_code,
        amount_fen=amount_fen,
        approved_on=on,
        claim_id=claim_id,
    )
    await _post_within(
        conn,
        "fund",
        fund["account_id"],
        amount_fen,
        "grant_approved",
        fund_id,
        [(fund["account_id"], -amount_fen), (grant_account, amount_fen)],
        on=on,
        grant_id=grant_id,
        reference=claim_id,
        memo=purpose[:200],
    )
    await emit(
        conn,
        GrantApproved(
            grant_id=grant_id,
            fund_id=fund_id,
            source_kind=fund["source_kind"],
            fiscal_year=fund["fiscal_year"],
            beneficiary_kind=beneficiary_kind,
            beneficiary_id=beneficiary_id,
            beneficiary_name=beneficiary_name,
            purpose=purpose,
            region_code=region_code,
            amount_fen=amount_fen,
            batch_id=batch_id,
        ),
    )
    return grant_id


async def revoke_grant(
    conn: asyncpg.Connection, grant_id: uuid.UUID, cmd: domain.RevokeIn, actor: Principal, today: date
) -> int:
    """Releases the unpaid rest of a grant back to its fund; returns it (fen)."""
    head = await store.grant_head(conn, grant_id)
    if head is None:
        raise NotFound("grant", grant_id)
    actor.ensure_visible(head["region_code"], "grant", grant_id)
    fund = await store.lock_fund(conn, head["fund_id"])  # fund before grant: the one lock order
    grant = await store.lock_grant(conn, grant_id)
    assert fund is not None and grant is not None  # the grant exists (head) and grants are never deleted
    if grant["status"] != "open":
        raise domain.grant_not_open(grant_id, grant["status"], "nothing left to revoke")
    released = grant["remaining_fen"]
    await store.post_entry(
        conn,
        "grant_revoked",
        head["fund_id"],
        [(grant["account_id"], -released), (fund["account_id"], released)],
        on=today,
        grant_id=grant_id,
        memo=cmd.reason or "revoked: unpaid rest released",
    )
    await store.record_revocation(conn, grant_id, released, today)
    await emit(
        conn,
        GrantRevoked(
            grant_id=grant_id,
            fund_id=head["fund_id"],
            source_kind=grant["source_kind"],
            fiscal_year=grant["fiscal_year"],
            beneficiary_kind=grant["beneficiary_kind"],
            released_fen=released,
            region_code=grant["region_code"],
        ),
    )
    return released


@dataclass(frozen=True)
class Payment:
    """A disbursement just made, and its grant after it."""

    id: uuid.UUID
    grant_id: uuid.UUID
    amount_fen: int
    paid_on: date
    memo: str | None
    entry_id: int
    grant_remaining_fen: int
    grant_status: str


async def disburse(
    conn: asyncpg.Connection, grant_id: uuid.UUID, cmd: domain.DisbursementIn, actor: Principal, today: date
) -> Payment:
    # The region rule is applied by the database's pay_grant (a grant outside these regions is not found),
    # so a payment stays one round trip.
    regions = None if actor.region == REGION_ROOT else actor.scope_codes()
    return await _pay(conn, grant_id, cmd.amount, on=cmd.paid_on or today, memo=cmd.memo, regions=regions)


async def _pay(
    conn: asyncpg.Connection,
    grant_id: uuid.UUID,
    amount_fen: int,
    *,
    on: date,
    memo: str | None,
    reference: uuid.UUID | None = None,
    regions: list[str] | None = None,
    batch_id: uuid.UUID | None = None,
) -> Payment:
    disbursement_id = uuid.uuid4()
    paid = await store.pay_grant(
        conn,
        grant_id,
        amount_fen,
        on=on,
        memo=memo,
        disbursement_id=disbursement_id,
        reference=reference,
        regions=regions,
    )
    if paid["outcome"] == "not_found":
        raise NotFound("grant", grant_id)
    if paid["outcome"] == "not_open":
        raise domain.grant_not_open(
            grant_id, paid["status"], "no more payments", balance=domain.fen_str(paid["remaining_fen"])
        )
    if paid["outcome"] == "insufficient":
        REFUSED.labels("grant").inc()
        raise domain.insufficient("grant", paid["account_id"], paid["remaining_fen"], amount_fen)
    await emit(
        conn,
        FundsDisbursed(
            disbursement_id=disbursement_id,
            grant_id=grant_id,
            fund_id=paid["fund_id"],
            source_kind=paid["source_kind"],
            fiscal_year=paid["fiscal_year"],
            beneficiary_kind=paid["beneficiary_kind"],
            beneficiary_id=paid["beneficiary_id"],
            amount_fen=amount_fen,
            grant_remaining_fen=paid["remaining_fen"],
            paid_on=on,
            region_code=paid["region_code"],
            batch_id=batch_id,
        ),
    )
    return Payment(
        disbursement_id, grant_id, amount_fen, on, memo, paid["entry_id"], paid["remaining_fen"], paid["status"]
    )


async def get_grant(conn, grant_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    grant = await store.get_grant(conn, grant_id)
    if grant is None:
        raise NotFound("grant", grant_id)
    actor.ensure_visible(grant["region_code"], "grant", grant_id)
    return grant


async def list_grants(
    conn,
    actor: Principal,
    *,
    fund_id: uuid.UUID | None,
    beneficiary_kind: str | None,
    beneficiary_id: str | None,
    status: str | None,
    region: str | None,
    after: tuple | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await store.list_grants(
        conn,
        fund_id=fund_id,
        beneficiary_kind=beneficiary_kind,
        beneficiary_id=beneficiary_id,
        status=status,
        regions=actor.scope_codes(region),
        after=after,
        limit=limit + 1,
    )


async def list_disbursements(
    conn, grant_id: uuid.UUID, actor: Principal, *, after: int | None, limit: int
) -> list[asyncpg.Record]:
    await get_grant(conn, grant_id, actor)
    return await store.disbursements(conn, grant_id, after, limit + 1)


# -- settlements ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Settlement:
    disbursement_id: uuid.UUID
    changed: bool  # False: the same settlement reported again (nothing changed)


async def settle_disbursement(
    conn: asyncpg.Connection, disbursement_id: uuid.UUID, cmd: domain.SettlementIn, actor: Principal, today: date
) -> Settlement:
    """The bank paid a disbursement out: recorded once (``disbursement.settled``), the amount matching to
    the fen. A disbursement outside the actor's scope is not found (404, the one region rule)."""
    row = await store.lock_disbursement(conn, disbursement_id)
    if row is None:
        raise NotFound("disbursement", disbursement_id)
    actor.ensure_visible(row["region_code"], "disbursement", disbursement_id)
    if not domain.settle(row, cmd, cmd.settled_at.astimezone(CHINA).date()):
        return Settlement(disbursement_id, False)
    await store.set_settled(conn, disbursement_id, cmd.settled_at, cmd.bank_reference)
    await emit(
        conn,
        DisbursementSettled(
            disbursement_id=disbursement_id,
            grant_id=row["grant_id"],
            fund_id=row["fund_id"],
            amount_fen=row["amount_fen"],
            paid_on=row["paid_on"],
            settled_at=cmd.settled_at,
            bank_reference=cmd.bank_reference,
            region_code=row["region_code"],
        ),
    )
    return Settlement(disbursement_id, True)


# -- payees (beneficiaries) ------------------------------------------------------------------
async def put_beneficiary(
    conn: asyncpg.Connection, kind: str, ident: str, cmd: domain.BeneficiaryIn, actor: Principal
) -> tuple[asyncpg.Record, bool]:
    """Register (or rename) a payee: (its figures, created?). A registered payee keeps its region; a
    branch takes the region membership gives it."""
    if cmd.region_code is not None:
        actor.ensure_region(cmd.region_code)
    place = await _payee_place(conn, kind, ident, actor, cmd.region_code)
    _, created = await store.upsert_beneficiary(conn, kind, ident, cmd.name, place or cmd.region_code or actor.region)
    return (await store.beneficiary_report(conn, kind, ident))[0], created


async def _payee_place(
    conn: asyncpg.Connection, kind: str, ident: str, actor: Principal, requested: str | None
) -> str | None:
    """Where a payee is known to be: its registration, else, for a branch, where membership says the branch
    is. Outside the caller's scope it is not found (404); a new branch payee cannot be put elsewhere (422)."""
    payee = await store.get_beneficiary(conn, kind, ident)
    if payee is not None:
        actor.ensure_visible(payee["region_code"], "beneficiary", f"{kind}/{ident}")
        return payee["region_code"]
    place = await store.branch_region(conn, ident) if kind == "branch" else None
    if place is not None:
        actor.ensure_visible(place, "beneficiary", f"{kind}/{ident}")
        if requested is not None and requested != place:
            raise Invalid("region_code", f"branch {ident} is in {place}")
    return place


async def record_branches(conn: asyncpg.Connection, places: list[tuple[str, str]]) -> None:
    """Membership's branches, where each is (from its branch events, in order)."""
    await store.record_branches(conn, places)


async def get_beneficiary(conn, kind: str, ident: str, actor: Principal) -> asyncpg.Record:
    rows = await store.beneficiary_report(conn, kind, ident)
    if not rows:
        raise NotFound("beneficiary", f"{kind}/{ident}")
    actor.ensure_visible(rows[0]["region_code"], "beneficiary", f"{kind}/{ident}")
    return rows[0]


async def report_beneficiaries(
    conn, actor: Principal, *, kind: str | None, region: str | None, after: tuple | None, limit: int
) -> list[asyncpg.Record]:
    return await store.beneficiary_report(
        conn, kind, None, regions=actor.scope_codes(region), after=after, limit=limit + 1
    )


# -- subsidy rules and routes (region-wide) -------------------------------------------------------
async def put_rule(
    conn: asyncpg.Connection, category: str, effective_from: date, cmd: domain.RuleIn, actor: Principal
) -> tuple[asyncpg.Record, bool]:
    domain.ensure_admin(actor)
    created = await store.upsert_rule(conn, category, effective_from, cmd.rate, cmd.note)
    return await store.get_rule(conn, category, effective_from), created


async def delete_rule(conn: asyncpg.Connection, category: str, effective_from: date, actor: Principal) -> None:
    domain.ensure_admin(actor)
    if not await store.delete_rule(conn, category, effective_from):
        raise NotFound("subsidy rule", f"{category} from {effective_from.isoformat()}")


async def list_rules(conn, *, category: str | None, on: date | None) -> list[asyncpg.Record]:
    """Every rule, or the one in force on ``on`` per category; by (category, effective_from)."""
    rows = await store.rules(conn, category)
    if on is not None:
        in_force = {
            c: domain.rule_in_force([r for r in store.as_rules(rows) if r.category == c], on)
            for c in {r["category"] for r in rows}
        }
        rows = [r for r in rows if (rule := in_force.get(r["category"])) and rule.effective_from == r["effective_from"]]
    return rows


async def put_route(conn: asyncpg.Connection, category: str, cmd: domain.RouteIn, actor: Principal) -> asyncpg.Record:
    domain.ensure_admin(actor)
    fund = await store.get_fund(conn, cmd.fund_id)
    if fund is None:
        raise Invalid("fund_id", "no such fund")
    if fund["status"] != "open":
        raise domain.fund_closed(cmd.fund_id, fund["closed_on"])
    await store.set_route(conn, category, cmd.year, cmd.fund_id)
    return next(r for r in await store.routes(conn) if r["category"] == category and r["year"] == cmd.year)


async def list_routes(conn) -> list[asyncpg.Record]:
    return await store.routes(conn)


# -- the subsidy saga -----------------------------------------------------------------------
def _claim_facts(event_id: uuid.UUID, data: SessionCompleted) -> dict[str, Any]:
    """A completion event's claim, before it is settled."""
    return {
        "id": uuid.uuid4(),
        "session_id": data.session_id,
        "event_id": event_id,
        "programme_id": data.programme_id,
        "programme_name": data.programme_name,
        "session_number": data.number,
        "organiser_id": data.organiser_id,
        "organiser_kind": data.organiser_kind.value,
        "organiser_name": data.organiser_name,
        "category": data.subsidy_category.value,
        "region_code": data.region_code,
        "city_code": data.city_code,
        "persons": domain.eligible_persons(data.eligible_member_ids, data.eligible_persons),
        "member_ids": sorted(set(data.eligible_member_ids)),
        "completed_on": data.completed_on,
    }


async def claim_subsidy(
    conn: asyncpg.Connection,
    event_id: uuid.UUID,
    data: SessionCompleted,
    today: date,
    *,
    auto_register_organisers: bool = False,
) -> dict[str, Any] | None:
    """A completed session's claim, settled (paid or rejected) in the caller's transaction; None when the
    session was already claimed (under another event id)."""
    if await store.claim_by_session(conn, data.session_id) is not None:
        return None
    claim = _claim_facts(event_id, data)
    # a session completed by a roster upload: its payment is of that batch (one digest for the federation)
    outcome = await settle_claim(
        conn, claim, today, auto_register_organisers=auto_register_organisers, batch_id=data.batch_id
    )
    await store.insert_claim(conn, {**claim, **outcome})
    return {**claim, **outcome}


@dataclass(frozen=True)
class Completion:
    """One consumed ``session.completed``: its event id, its data and the trace it belongs to."""

    event_id: uuid.UUID
    data: SessionCompleted
    trace_id: str | None = None


async def claim_subsidies(
    conn: asyncpg.Connection,
    completions: list[Completion],
    actor: Principal,
    today: date,
    *,
    auto_register_organisers: bool = False,
) -> list[dict[str, Any] | None]:
    """``claim_subsidy`` for a batch of completions (a partition's), in the caller's transaction, with a fixed
    number of statements whatever the batch's size: one answer per completion, in order (None: the session was
    claimed before, or earlier in this batch).

    The same rules decide each claim as in ``settle_claim`` (``domain.decide_subsidy`` with the rule in force,
    the organiser, the routed fund), in the batch's order, each claim against the fund's balance less what the
    claims before it took (all or nothing per claim). The routed funds are locked first, in id order, and every
    account the batch moves is locked in id order by ``post_entries``: the one lock order of the single path.
    The accounts' CHECKs still refuse any overdraft, so a wrong decision could only fail the batch, never pay."""
    del actor  # the saga acts for the federation (SAGA): its claims name their own regions
    claimed = await store.claimed_sessions(conn, [c.data.session_id for c in completions])
    claims: list[tuple[Completion, dict[str, Any]] | None] = []
    for completion in completions:
        if completion.data.session_id in claimed:
            claims.append(None)
            continue
        claimed.add(completion.data.session_id)
        claims.append((completion, _claim_facts(completion.event_id, completion.data)))
    todo = [c for c in claims if c is not None]
    if not todo:
        return [None] * len(claims)

    rules = store.as_rules(await store.rules(conn))
    payee_keys = sorted({(_payee_kind(claim), claim["organiser_id"]) for _, claim in todo})
    organisers = await store.get_beneficiaries(conn, payee_keys)
    if auto_register_organisers:
        for _, claim in todo:
            kind = _payee_kind(claim)
            if (kind, claim["organiser_id"]) not in organisers and claim.get("organiser_name") and claim["persons"] > 0:
                await store.upsert_beneficiary(
                    conn, kind, claim["organiser_id"], scrub_text(claim["organiser_name"]), claim["region_code"]
                )
                organisers[(kind, claim["organiser_id"])] = await store.get_beneficiary(
                    conn, kind, claim["organiser_id"]
                )
    wanted = sorted({(claim["category"], claim["completed_on"].year) for _, claim in todo})
    routes = await store.routes_for(conn, wanted)
    funds = await store.lock_funds(conn, list(set(routes.values()))) if routes else {}
    available = {fund_id: fund["available_fen"] for fund_id, fund in funds.items()}

    paid: list[dict[str, Any]] = []  # the claims to pay, with their grant's and payment's facts
    traced: list[tuple[str | None, list]] = []  # each claim's events under its completion's trace
    answers: dict[uuid.UUID, dict[str, Any]] = {}
    counted: Tally[tuple[str, str, str]] = Tally()  # the metric's labels → claims (one increment each)
    for completion, claim in todo:
        kind = _payee_kind(claim)
        organiser = organisers.get((kind, claim["organiser_id"]))
        fund_id = routes.get((claim["category"], claim["completed_on"].year))
        fund = funds.get(fund_id) if fund_id else None
        rule = domain.rule_in_force([r for r in rules if r.category == claim["category"]], claim["completed_on"])
        decision = _decide(claim, rule, organiser, fund, available.get(fund_id) if fund_id else None)
        counted[_outcome_labels(claim, decision)] += 1
        batch_id = completion.data.batch_id
        if not decision.paid:
            outcome, event = _rejection(claim, decision, rule, fund, batch_id)
            traced.append((completion.trace_id, [event]))
        else:
            assert fund is not None and organiser is not None  # a paid decision had both
            available[fund["id"]] -= decision.amount_fen
            grant_id, disbursement_id = uuid.uuid4(), uuid.uuid4()
            outcome = _paid(fund, decision, grant_id, disbursement_id)
            paid.append(
                {
                    "claim": claim,
                    "decision": decision,
                    "fund": fund,
                    "organiser": organiser,
                    "kind": kind,
                    "grant_id": grant_id,
                    "disbursement_id": disbursement_id,
                    "purpose": _purpose(claim, decision),
                    "batch_id": batch_id,
                    "trace_id": completion.trace_id,
                }
            )
        answers[claim["id"]] = {**claim, **outcome}

    for labels, n in counted.items():
        CLAIMS.labels(*labels).inc(n)
    if paid:
        await _pay_subsidies(conn, paid, today, traced)
    await _emit_traced(conn, traced)
    await store.insert_claims(conn, [answers[claim["id"]] for _, claim in todo])
    return [None if c is None else answers[c[1]["id"]] for c in claims]


async def _pay_subsidies(
    conn: asyncpg.Connection, paid: list[dict[str, Any]], today: date, traced: list[tuple[str | None, list]]
) -> None:
    """A batch's paid claims in set-based statements: what ``_approve`` and ``_pay`` write for each (the grant
    to the organiser, approved and disbursed in full, its two journal entries, the payment) and their events
    in the same order (grant.approved, disbursement.made, subsidy.claimed, subsidy.paid)."""
    payees: dict[tuple[str, str], tuple[str, str, str, str | None]] = {}
    for p in paid:  # each payee once (one statement may touch a row only once), named as registered
        key = (p["kind"], p["claim"]["organiser_id"])
        payees.setdefault(key, (*key, p["organiser"]["name"], p["claim"]["region_code"]))
    await store.touch_beneficiaries(conn, list(payees.values()))
    grant_accounts = await store.insert_paid_grants(
        conn,
        [
            {
                "id": p["grant_id"],
                "fund_id": p["fund"]["id"],
                "beneficiary_kind": p["kind"],
                "beneficiary_id": p["claim"]["organiser_id"],
                "beneficiary_name": p["organiser"]["name"],
                "purpose": p["purpose"],
                "region_code": p["claim"]["region_code"],
                "amount_fen": p["decision"].amount_fen,
                "paid_on": today,
                "claim_id": p["claim"]["id"],
            }
            for p in paid
        ],
    )
    entries = []
    for p in paid:
        amount, fund, grant_id = p["decision"].amount_fen, p["fund"], p["grant_id"]
        account = grant_accounts[grant_id]
        entries.append(
            {
                "kind": "grant_approved",
                "fund_id": fund["id"],
                "grant_id": grant_id,
                "reference": p["claim"]["id"],
                "memo": p["purpose"][:200],
                "on": today,
                "lines": [(fund["account_id"], -amount), (account, amount)],
            }
        )
        entries.append(
            {
                "kind": "disbursement",
                "fund_id": fund["id"],
                "grant_id": grant_id,
                "reference": p["claim"]["id"],
                "memo": _payment_memo(p["claim"]),
                "on": today,
                "lines": [(account, -amount), (p["organiser"]["account_id"], amount)],
            }
        )
    entry_ids = await store.post_entries(conn, entries)
    await store.insert_disbursements(
        conn,
        [
            {
                "id": p["disbursement_id"],
                "grant_id": p["grant_id"],
                "amount_fen": p["decision"].amount_fen,
                "paid_on": today,
                "memo": _payment_memo(p["claim"]),
                "entry_id": entry_ids[2 * i + 1],
            }
            for i, p in enumerate(paid)
        ],
    )
    for p in paid:
        claim, decision, fund = p["claim"], p["decision"], p["fund"]
        common = _common(claim, decision, p["batch_id"])
        traced.append(
            (
                p["trace_id"],
                [
                    GrantApproved(
                        grant_id=p["grant_id"],
                        fund_id=fund["id"],
                        source_kind=fund["source_kind"],
                        fiscal_year=fund["fiscal_year"],
                        beneficiary_kind=p["kind"],
                        beneficiary_id=claim["organiser_id"],
                        beneficiary_name=p["organiser"]["name"],
                        purpose=p["purpose"],
                        region_code=claim["region_code"],
                        amount_fen=decision.amount_fen,
                        batch_id=p["batch_id"],
                    ),
                    FundsDisbursed(
                        disbursement_id=p["disbursement_id"],
                        grant_id=p["grant_id"],
                        fund_id=fund["id"],
                        source_kind=fund["source_kind"],
                        fiscal_year=fund["fiscal_year"],
                        beneficiary_kind=p["kind"],
                        beneficiary_id=claim["organiser_id"],
                        amount_fen=decision.amount_fen,
                        grant_remaining_fen=0,
                        paid_on=today,
                        region_code=claim["region_code"],
                        batch_id=p["batch_id"],
                    ),
                    *_paid_events(claim, decision, fund, p["disbursement_id"], common),
                ],
            )
        )


async def _emit_traced(conn: asyncpg.Connection, traced: list[tuple[str | None, list]]) -> None:
    """The batch's events into the outbox in one statement, each claim's in their order, each under its
    completion's trace id (as the single path's, which runs under the consumed event's trace)."""
    await add_traced(conn, [(event, trace_id) for trace_id, events in traced for event in events])


async def retry_claim(
    conn: asyncpg.Connection,
    claim_id: uuid.UUID,
    actor: Principal,
    today: date,
    *,
    auto_register_organisers: bool = False,
) -> asyncpg.Record:
    """Settle a rejected claim again (after a top-up, a new rule or route, a registered organiser)."""
    claim = await store.get_claim(conn, claim_id, lock=True)
    if claim is None:
        raise NotFound("subsidy claim", claim_id)
    actor.ensure_visible(claim["region_code"], "subsidy claim", claim_id)
    if claim["status"] == "paid":
        raise domain.claim_paid(claim_id, claim["disbursement_id"])
    outcome = await settle_claim(conn, dict(claim), today, auto_register_organisers=auto_register_organisers)
    await store.update_claim(conn, claim_id, outcome)
    return await store.get_claim(conn, claim_id)


def _payee_kind(claim: dict[str, Any]) -> str:
    return domain.organiser_beneficiary_kind(claim["organiser_kind"]).value


def _decide(
    claim: dict[str, Any],
    rule: domain.Rule | None,
    organiser: asyncpg.Record | None,
    fund: asyncpg.Record | None,
    available_fen: int | None = None,
) -> domain.Decision:
    """The claim decided by the domain's rule; ``available_fen``: the fund's balance if not the row's (a batch's
    claims each see what the claims before them left)."""
    return domain.decide_subsidy(
        persons=claim["persons"],
        rule=rule,
        organiser_known=organiser is not None,
        fund=domain.FundState(
            fund["id"],
            fund["status"],
            fund["available_fen"] if available_fen is None else available_fen,
            fund["name"],
        )
        if fund
        else None,
        category=claim["category"],
        completed_on=claim["completed_on"],
        organiser=f"{_payee_kind(claim)} {claim['organiser_id']}",
    )


def _outcome_labels(claim: dict[str, Any], decision: domain.Decision) -> tuple[str, str, str]:
    return (
        claim["category"],
        "paid" if decision.paid else "rejected",
        decision.reason.value if decision.reason else "",
    )


def _count(claim: dict[str, Any], decision: domain.Decision) -> None:
    CLAIMS.labels(*_outcome_labels(claim, decision)).inc()


def _common(claim: dict[str, Any], decision: domain.Decision, batch_id: uuid.UUID | None) -> dict[str, Any]:
    """The fields every subsidy event of this claim carries."""
    return dict(
        claim_id=claim["id"],
        session_id=claim["session_id"],
        organiser_id=claim["organiser_id"],
        subsidy_category=claim["category"],
        region_code=claim["region_code"],
        city_code=claim["city_code"],
        persons=decision.persons,
        batch_id=batch_id,
    )


def _rejection(
    claim: dict[str, Any],
    decision: domain.Decision,
    rule: domain.Rule | None,
    fund: asyncpg.Record | None,
    batch_id: uuid.UUID | None,
) -> tuple[dict[str, Any], SubsidyRejected]:
    """A rejected claim's outcome columns and its event."""
    assert decision.reason is not None  # a refusal always says why
    event = SubsidyRejected(
        **_common(claim, decision, batch_id),
        amount_fen=decision.amount_fen,
        reason=decision.reason,
        detail=decision.detail,
    )
    return {
        "status": "rejected",
        "rate_fen": decision.rate_fen if rule else None,
        "amount_fen": decision.amount_fen,
        "reason": decision.reason.value,
        "detail": decision.detail,
        "fund_id": fund["id"] if fund else None,
        "grant_id": None,
        "disbursement_id": None,
    }, event


def _paid(
    fund: asyncpg.Record, decision: domain.Decision, grant_id: uuid.UUID, disbursement_id: uuid.UUID
) -> dict[str, Any]:
    """A paid claim's outcome columns."""
    return {
        "status": "paid",
        "rate_fen": decision.rate_fen,
        "amount_fen": decision.amount_fen,
        "reason": None,
        "detail": None,
        "fund_id": fund["id"],
        "grant_id": grant_id,
        "disbursement_id": disbursement_id,
    }


def _paid_events(
    claim: dict[str, Any],
    decision: domain.Decision,
    fund: asyncpg.Record,
    disbursement_id: uuid.UUID,
    common: dict[str, Any],
) -> tuple[SubsidyClaimed, SubsidyPaid]:
    return (
        SubsidyClaimed(
            **common, rate_fen=decision.rate_fen, amount_fen=decision.amount_fen, completed_on=claim["completed_on"]
        ),
        SubsidyPaid(
            **common,
            fund_id=fund["id"],
            source_kind=fund["source_kind"],
            fiscal_year=fund["fiscal_year"],
            disbursement_id=disbursement_id,
            amount_fen=decision.amount_fen,
        ),
    )


def _purpose(claim: dict[str, Any], decision: domain.Decision) -> str:
    """The subsidy grant's purpose: the category, programme, session number, persons × rate, and the session."""
    label = domain.CATEGORY_LABEL[domain.SubsidyCategory(claim["category"])]
    programme = claim.get("programme_name") or "training"
    number = claim.get("session_number")
    purpose = _scrubbed(
        f"{label}: {programme}"
        + (f" 第{number}期" if number else "")
        + f", {decision.persons} × {domain.fen_str(decision.rate_fen)} yuan"
    )
    return purpose + f" (session {claim['session_id']})"  # after the scrub: a uuid's digit groups are no phone


@functools.lru_cache(maxsize=4096)
def _scrubbed(text: str) -> str:
    """``scrub_text`` remembered: a batch's claims mostly share a programme, a session number and a rate."""
    return scrub_text(text)


def _payment_memo(claim: dict[str, Any]) -> str:
    return f"subsidy claim {claim['id']}"


async def settle_claim(
    conn: asyncpg.Connection,
    claim: dict[str, Any],
    today: date,
    *,
    auto_register_organisers: bool = False,
    batch_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """Decide a subsidy claim and carry it out: pay it through a grant to the organiser, or reject it.

    ``claim`` holds the claim's facts (id, session, organiser, category, persons, completion
    date…). Returns the outcome columns to store with it. Runs in the caller's transaction.
    The organiser must be a registered beneficiary (a payee), unless ``auto_register_organisers``
    lets an organiser named in the event be registered on the fly. ``batch_id``: the bulk operation the
    claim came from (a roster upload), carried by every event of its settlement.
    """
    category, completed_on = claim["category"], claim["completed_on"]
    rule = domain.rule_in_force(store.as_rules(await store.rules(conn, category)), completed_on)
    beneficiary_kind = _payee_kind(claim)
    organiser = await store.get_beneficiary(conn, beneficiary_kind, claim["organiser_id"])
    if organiser is None and auto_register_organisers and claim.get("organiser_name") and claim["persons"] > 0:
        await store.upsert_beneficiary(
            conn, beneficiary_kind, claim["organiser_id"], scrub_text(claim["organiser_name"]), claim["region_code"]
        )
        organiser = await store.get_beneficiary(conn, beneficiary_kind, claim["organiser_id"])
    fund_id = await store.route_for(conn, category, completed_on.year)
    fund = await store.lock_fund(conn, fund_id) if fund_id else None
    decision = _decide(claim, rule, organiser, fund)
    _count(claim, decision)
    if not decision.paid:
        outcome, event = _rejection(claim, decision, rule, fund, batch_id)
        await emit(conn, event)
        return outcome
    assert fund is not None and organiser is not None  # a paid decision had both
    purpose = _purpose(claim, decision)
    grant_id = await _approve(
        conn,
        fund_id=fund["id"],
        beneficiary_kind=beneficiary_kind,
        beneficiary_id=claim["organiser_id"],
        beneficiary_name=organiser["name"],
        purpose=purpose,
        region_code=claim["region_code"],
        amount_fen=decision.amount_fen,
        on=today,
        claim_id=claim["id"],
        batch_id=batch_id,
    )
    disbursement_id = (
        await _pay(
            conn,
            grant_id,
            decision.amount_fen,
            on=today,
            memo=_payment_memo(claim),
            reference=claim["id"],
            batch_id=batch_id,
        )
    ).id
    await emit(conn, *_paid_events(claim, decision, fund, disbursement_id, _common(claim, decision, batch_id)))
    return _paid(fund, decision, grant_id, disbursement_id)


async def get_claim(conn, claim_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    claim = await store.get_claim(conn, claim_id)
    if claim is None:
        raise NotFound("subsidy claim", claim_id)
    actor.ensure_visible(claim["region_code"], "subsidy claim", claim_id)
    return claim


async def list_claims(
    conn,
    actor: Principal,
    *,
    status: str | None,
    session_id: uuid.UUID | None,
    organiser_id: str | None,
    region: str | None,
    after: tuple | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await store.list_claims(
        conn,
        status=status,
        session_id=session_id,
        organiser_id=organiser_id,
        regions=actor.scope_codes(region),
        after=after,
        limit=limit + 1,
    )


# -- reports and the ledger --------------------------------------------------------------------
@dataclass(frozen=True)
class FundTotals:
    funds: int
    total_fen: int
    allocated_fen: int
    committed_fen: int
    disbursed_fen: int
    available_fen: int


async def fund_totals(conn, *, source_kind: str | None, fiscal_year: int | None) -> FundTotals:
    rows = await store.fund_figures(conn, None, source_kind, fiscal_year)
    figures = [store.figures_of(r) for r in rows]
    return FundTotals(
        len(rows),
        *(
            sum(getattr(f, k) for f in figures)
            for k in ("total_fen", "allocated_fen", "committed_fen", "disbursed_fen", "available_fen")
        ),
    )


async def report_sources(conn) -> list[dict[str, Any]]:
    """Per source kind and fiscal year: funds, total, allocated, committed, disbursed, remaining (fen)."""
    groups: dict[tuple[str, int], dict[str, int]] = {}
    for row in await store.fund_figures(conn):
        f = store.figures_of(row)
        g = groups.setdefault(
            (row["source_kind"], row["fiscal_year"]),
            dict.fromkeys(("funds", "total", "allocated", "committed", "disbursed", "remaining"), 0),
        )
        g["funds"] += 1
        g["total"] += f.total_fen
        g["allocated"] += f.allocated_fen
        g["committed"] += f.committed_fen
        g["disbursed"] += f.disbursed_fen
        g["remaining"] += f.available_fen
    return [{"source_kind": k, "fiscal_year": y, **g} for (k, y), g in sorted(groups.items())]


async def account_journal(
    conn, account_id: int, actor: Principal, *, after: int | None, limit: int
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """An account and its lines after line ``after``. Visible when its owner is: a grant's or a payee's
    account within the caller's scope; a fund's or a budget source's to a region-level caller only."""
    acct = await store.account(conn, account_id)
    if acct is None:
        raise NotFound("account", account_id)
    actor.ensure_visible(domain.owner_region(acct["owner_region"]), "account", account_id)
    return acct, await store.journal(conn, account_id, after or 0, limit + 1)


async def ledger_check(pool: asyncpg.Pool, actor: Principal) -> dict[str, Any]:
    """Every invariant of the whole ledger, on one snapshot: a region-level question."""
    actor.ensure_region_level()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await store.ledger_check(conn)
