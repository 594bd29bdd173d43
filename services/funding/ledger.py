"""The ledger operations, shared by the HTTP routes and the subsidy saga.

Each runs inside the caller's transaction: it locks what it changes (fund row, then
grant row, then — inside the database's ``post_entry`` — the accounts by id), posts
balanced journal entries and queues its events in the outbox. Whether money suffices
is decided by the database: a fund or grant account's ``CHECK (balance >= 0)``
refuses the overdraft and the refusal becomes a 409 problem carrying the balance.
"""
from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.funding import domain, store
from shared import outbox
from shared.events import EventData
from shared.events.funding import (
    FundClosed, FundOpened, FundsDisbursed, FundToppedUp, GrantApproved, GrantRevoked, SubsidyClaimed, SubsidyPaid,
    SubsidyRejected,
)
from shared.logging import trace_id_var
from shared.money import fen_to_yuan
from shared.problems import Problem, invalid, not_found
from shared.regions import REGION_ROOT


CLAIMS = Counter("changai_funding_subsidy_claims_total", "Subsidy claims settled (retries included)",
                 ["category", "outcome", "reason"])
REFUSED = Counter("changai_funding_overdrafts_refused_total",
                  "Grants and payments the ledger refused for lack of money", ["account"])


async def emit(conn: asyncpg.Connection, *events: EventData) -> None:
    for event in events:
        await outbox.add(conn, event, trace_id=trace_id_var.get())


def insufficient(account_kind: str, account_id: int, balance_fen: int, requested_fen: int) -> Problem:
    return Problem(
        409, "insufficient-funds", f"The {account_kind} cannot afford this",
        f"the {account_kind} has {fen_to_yuan(balance_fen)} yuan; {fen_to_yuan(requested_fen)} was asked",
        account=account_kind, account_id=account_id, balance=fen_to_yuan(balance_fen),
        requested=fen_to_yuan(requested_fen))


async def _post_within(conn: asyncpg.Connection, account_kind: str, debited_account: int, amount_fen: int,
                       kind: str, fund_id: uuid.UUID, lines: list[tuple[int, int]], **kw: Any) -> int:
    """Post an entry that takes ``amount_fen`` out of ``debited_account``; its CHECK refuses an overdraft."""
    try:
        async with conn.transaction():  # a savepoint: after a refusal the transaction can still read the balance
            return await store.post_entry(conn, kind, fund_id, lines, **kw)
    except asyncpg.CheckViolationError as exc:
        if exc.constraint_name != "account_no_overdraft":
            raise
        REFUSED.labels(account_kind).inc()
        raise insufficient(account_kind, debited_account, await store.account_balance(conn, debited_account),
                           amount_fen) from None


# -- funds ---------------------------------------------------------------------------
async def open_fund(conn: asyncpg.Connection, cmd: domain.FundIn) -> uuid.UUID:
    fund_id = uuid.uuid4()
    on = cmd.opened_on or domain.today()
    fund_account = await store.insert_fund(conn, fund_id, cmd.name, cmd.source_kind.value, cmd.fiscal_year, on)
    if cmd.amount > 0:
        source = await store.source_account(conn, cmd.source_kind.value)
        await store.post_entry(conn, "fund_opened", fund_id, [(source, -cmd.amount), (fund_account, cmd.amount)],
                               on=on, memo=f"opened: {cmd.name}")
    await emit(conn, FundOpened(fund_id=fund_id, name=cmd.name, source_kind=cmd.source_kind,
                                fiscal_year=cmd.fiscal_year, amount_fen=cmd.amount, region_code=REGION_ROOT))
    return fund_id


async def _open_fund_locked(conn: asyncpg.Connection, fund_id: uuid.UUID) -> asyncpg.Record:
    fund = await store.lock_fund(conn, fund_id)
    if fund is None:
        raise not_found("fund", fund_id)
    if fund["status"] != "open":
        raise Problem(409, "fund-closed", "The fund is closed", f"fund {fund_id} was closed on {fund['closed_on']}",
                      fund_id=str(fund_id))
    return fund


async def top_up(conn: asyncpg.Connection, fund_id: uuid.UUID, cmd: domain.TopUpIn) -> None:
    fund = await _open_fund_locked(conn, fund_id)
    source = await store.source_account(conn, fund["source_kind"])
    await store.post_entry(conn, "fund_topped_up", fund_id, [(source, -cmd.amount), (fund["account_id"], cmd.amount)],
                           on=domain.today(), memo=cmd.note or "top-up")
    total = store.figures_of((await store.fund_figures(conn, [fund_id]))[0]).total_fen
    await emit(conn, FundToppedUp(fund_id=fund_id, source_kind=fund["source_kind"], fiscal_year=fund["fiscal_year"],
                                  amount_fen=cmd.amount, total_fen=total, region_code=REGION_ROOT))


async def close_fund(conn: asyncpg.Connection, fund_id: uuid.UUID, cmd: domain.CloseIn) -> int:
    """Returns the unspent money to its budget source; refused while grants hold unpaid money."""
    fund = await _open_fund_locked(conn, fund_id)
    committed = await store.committed(conn, fund_id)
    if committed:
        raise Problem(409, "fund-has-commitments", "The fund still has unpaid grants",
                      f"{fen_to_yuan(committed)} yuan is granted and unpaid: pay or revoke those grants first",
                      committed=fen_to_yuan(committed), fund_id=str(fund_id))
    unspent = fund["available_fen"]
    on = domain.today()
    if unspent:
        source = await store.source_account(conn, fund["source_kind"])
        await store.post_entry(conn, "fund_closed", fund_id, [(fund["account_id"], -unspent), (source, unspent)],
                               on=on, memo=cmd.reason or "closed: unspent money returned")
    await store.close_fund(conn, fund_id, on)
    await emit(conn, FundClosed(fund_id=fund_id, source_kind=fund["source_kind"], fiscal_year=fund["fiscal_year"],
                                unspent_fen=unspent, region_code=REGION_ROOT))
    return unspent


# -- grants ----------------------------------------------------------------------------
async def approve_grant(conn: asyncpg.Connection, *, fund_id: uuid.UUID, beneficiary_kind: str, beneficiary_id: str,
                        beneficiary_name: str, purpose: str, region_code: str | None, amount_fen: int,
                        approved_on: date | None = None, claim_id: uuid.UUID | None = None) -> uuid.UUID:
    fund = await store.lock_fund(conn, fund_id)
    if fund is None:
        raise invalid("fund_id", "no such fund")
    if fund["status"] != "open":
        raise Problem(409, "fund-closed", "The fund is closed", f"fund {fund_id} was closed on {fund['closed_on']}",
                      fund_id=str(fund_id))
    await store.upsert_beneficiary(conn, beneficiary_kind, beneficiary_id, beneficiary_name, region_code)
    grant_id = uuid.uuid4()
    on = approved_on or domain.today()
    grant_account = await store.insert_grant(
        conn, grant_id=grant_id, fund_id=fund_id, beneficiary_kind=beneficiary_kind, beneficiary_id=beneficiary_id,
        beneficiary_name=beneficiary_name, purpose=purpose, region_code=region_code, amount_fen=amount_fen,
        approved_on=on, claim_id=claim_id)
    await _post_within(conn, "fund", fund["account_id"], amount_fen, "grant_approved", fund_id,
                       [(fund["account_id"], -amount_fen), (grant_account, amount_fen)],
                       on=on, grant_id=grant_id, reference=claim_id, memo=purpose[:200])
    await emit(conn, GrantApproved(
        grant_id=grant_id, fund_id=fund_id, source_kind=fund["source_kind"], fiscal_year=fund["fiscal_year"],
        beneficiary_kind=beneficiary_kind, beneficiary_id=beneficiary_id, beneficiary_name=beneficiary_name,
        purpose=purpose, region_code=region_code,
        amount_fen=amount_fen))
    return grant_id


async def revoke_grant(conn: asyncpg.Connection, grant_id: uuid.UUID, cmd: domain.RevokeIn) -> int:
    """Releases the unpaid rest of a grant back to its fund; returns it (fen)."""
    fund_id = await store.grant_fund_id(conn, grant_id)
    if fund_id is None:
        raise not_found("grant", grant_id)
    fund = await store.lock_fund(conn, fund_id)  # fund before grant: the one lock order
    grant = await store.lock_grant(conn, grant_id)
    if grant["status"] != "open":
        raise Problem(409, "grant-not-open", f"The grant is {grant['status']}",
                      f"grant {grant_id} is {grant['status']}: nothing left to revoke", status_now=grant["status"])
    released = grant["remaining_fen"]
    on = domain.today()
    await store.post_entry(conn, "grant_revoked", fund_id, [(grant["account_id"], -released),
                                                             (fund["account_id"], released)],
                           on=on, grant_id=grant_id, memo=cmd.reason or "revoked: unpaid rest released")
    await store.record_revocation(conn, grant_id, released, on)
    await emit(conn, GrantRevoked(grant_id=grant_id, fund_id=fund_id, source_kind=grant["source_kind"],
                                  fiscal_year=grant["fiscal_year"], beneficiary_kind=grant["beneficiary_kind"],
                                  released_fen=released, region_code=grant["region_code"]))
    return released


async def disburse(conn: asyncpg.Connection, grant_id: uuid.UUID, amount_fen: int, *, paid_on: date | None = None,
                   memo: str | None = None, reference: uuid.UUID | None = None) -> uuid.UUID:
    grant = await store.lock_grant(conn, grant_id)
    if grant is None:
        raise not_found("grant", grant_id)
    if grant["status"] != "open":
        raise Problem(409, "grant-not-open", f"The grant is {grant['status']}",
                      f"grant {grant_id} is {grant['status']}: no more payments", status_now=grant["status"],
                      balance=fen_to_yuan(grant["remaining_fen"]))
    beneficiary_account = grant["beneficiary_account_id"]
    disbursement_id = uuid.uuid4()
    on = paid_on or domain.today()
    entry = await _post_within(conn, "grant", grant["account_id"], amount_fen, "disbursement", grant["fund_id"],
                               [(grant["account_id"], -amount_fen), (beneficiary_account, amount_fen)],
                               on=on, grant_id=grant_id, reference=reference or disbursement_id, memo=memo)
    await store.insert_disbursement(conn, disbursement_id, grant_id, amount_fen, on, memo, entry)
    await store.record_payment(conn, grant_id, amount_fen, on)
    await emit(conn, FundsDisbursed(
        disbursement_id=disbursement_id, grant_id=grant_id, fund_id=grant["fund_id"], source_kind=grant["source_kind"],
        fiscal_year=grant["fiscal_year"], beneficiary_kind=grant["beneficiary_kind"],
        beneficiary_id=grant["beneficiary_id"], amount_fen=amount_fen,
        grant_remaining_fen=grant["remaining_fen"] - amount_fen, paid_on=on, region_code=grant["region_code"]))
    return disbursement_id


# -- the subsidy saga ----------------------------------------------------------------------
async def settle_claim(conn: asyncpg.Connection, claim: dict[str, Any], *,
                       auto_register_organisers: bool = False) -> dict[str, Any]:
    """Decide a subsidy claim and carry it out: pay it through a grant to the organiser, or reject it.

    ``claim`` holds the claim's facts (id, session, organiser, category, persons, completion
    date…). Returns the outcome columns to store with it. Runs in the caller's transaction.
    The organiser must be a registered beneficiary (a payee), unless ``auto_register_organisers``
    lets an organiser named in the event be registered on the fly.
    """
    category, completed_on = claim["category"], claim["completed_on"]
    rule = domain.rule_in_force(store.as_rules(await store.rules(conn, category)), completed_on)
    beneficiary_kind = domain.organiser_beneficiary_kind(claim["organiser_kind"]).value
    organiser = await store.get_beneficiary(conn, beneficiary_kind, claim["organiser_id"])
    if organiser is None and auto_register_organisers and claim.get("organiser_name") and claim["persons"] > 0:
        await store.upsert_beneficiary(conn, beneficiary_kind, claim["organiser_id"], claim["organiser_name"],
                                       claim["region_code"])
        organiser = await store.get_beneficiary(conn, beneficiary_kind, claim["organiser_id"])
    fund_id = await store.route_for(conn, category, completed_on.year)
    fund = await store.lock_fund(conn, fund_id) if fund_id else None
    decision = domain.decide_subsidy(
        persons=claim["persons"], rule=rule, organiser_known=organiser is not None,
        fund=domain.FundState(fund["id"], fund["status"], fund["available_fen"], fund["name"]) if fund else None,
        category=category, completed_on=completed_on, organiser=f"{beneficiary_kind} {claim['organiser_id']}")
    common = dict(claim_id=claim["id"], session_id=claim["session_id"], organiser_id=claim["organiser_id"],
                  subsidy_category=category, region_code=claim["region_code"], city_code=claim["city_code"],
                  persons=decision.persons)
    CLAIMS.labels(category, "paid" if decision.paid else "rejected",
                  decision.reason.value if decision.reason else "").inc()
    if not decision.paid:
        await emit(conn, SubsidyRejected(**common, amount_fen=decision.amount_fen, reason=decision.reason,
                                         detail=decision.detail))
        return {"status": "rejected", "rate_fen": decision.rate_fen if rule else None,
                "amount_fen": decision.amount_fen, "reason": decision.reason.value, "detail": decision.detail,
                "fund_id": fund["id"] if fund else None, "grant_id": None, "disbursement_id": None}
    label = domain.CATEGORY_LABEL[domain.SubsidyCategory(category)]
    programme = claim.get("programme_name") or "training"
    number = claim.get("session_number")
    purpose = (f"{label}: {programme}" + (f" 第{number}期" if number else "")
               + f", {decision.persons} × {domain.fen_str(decision.rate_fen)} yuan (session {claim['session_id']})")
    grant_id = await approve_grant(
        conn, fund_id=fund["id"], beneficiary_kind=beneficiary_kind, beneficiary_id=claim["organiser_id"],
        beneficiary_name=organiser["name"], purpose=purpose, region_code=claim["region_code"], amount_fen=decision.amount_fen,
        claim_id=claim["id"])
    disbursement_id = await disburse(conn, grant_id, decision.amount_fen, memo=f"subsidy claim {claim['id']}",
                                     reference=claim["id"])
    await emit(conn,
               SubsidyClaimed(**common, rate_fen=decision.rate_fen, amount_fen=decision.amount_fen,
                              completed_on=completed_on),
               SubsidyPaid(**common, fund_id=fund["id"], source_kind=fund["source_kind"],
                           fiscal_year=fund["fiscal_year"], disbursement_id=disbursement_id,
                           amount_fen=decision.amount_fen))
    return {"status": "paid", "rate_fen": decision.rate_fen, "amount_fen": decision.amount_fen, "reason": None,
            "detail": None, "fund_id": fund["id"], "grant_id": grant_id, "disbursement_id": disbursement_id}
