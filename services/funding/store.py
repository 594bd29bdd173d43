"""Funding's SQL, through asyncpg.

Row locks are always taken in one order — fund row, then grant row, then accounts by
id (inside ``post_entry``) — so concurrent operations wait for each other and never
deadlock. They are FOR NO KEY UPDATE locks: they exclude each other but not the
FOR KEY SHARE locks that foreign-key checks take (a payment's journal entry refers to
its fund while a revocation may hold that fund).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, TypeAlias

import asyncpg

from services.funding.domain import FundFigures, Rule

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


# -- ledger ------------------------------------------------------------------------
async def post_entry(
    conn: asyncpg.Connection,
    kind: str,
    fund_id: uuid.UUID,
    lines: list[tuple[int, int]],
    *,
    on: date,
    grant_id: uuid.UUID | None = None,
    reference: uuid.UUID | None = None,
    memo: str | None = None,
) -> int:
    """One balanced journal entry through the database's ``post_entry`` (which checks it)."""
    return await conn.fetchval(
        "SELECT post_entry($1, $2, $3, $4, $5, $6, $7::bigint[], $8::bigint[])",
        kind,
        fund_id,
        grant_id,
        reference,
        memo,
        on,
        [a for a, _ in lines],
        [m for _, m in lines],
    )


async def source_account(conn: Conn, source_kind: str) -> int:
    return await conn.fetchval("SELECT id FROM accounts WHERE kind = 'source' AND source_kind = $1", source_kind)


async def account(conn: Conn, account_id: int) -> asyncpg.Record | None:
    """An account with its owner's region (a grant's or a payee's; NULL for a fund or a budget source)."""
    return await conn.fetchrow(
        """SELECT a.*, coalesce(g.region_code, b.region_code) AS owner_region FROM accounts a
             LEFT JOIN grants g ON a.kind = 'grant' AND g.id = a.grant_id
             LEFT JOIN beneficiaries b ON a.kind = 'beneficiary' AND b.kind = a.beneficiary_kind
                                      AND b.id = a.beneficiary_id
            WHERE a.id = $1""",
        account_id,
    )


async def account_balance(conn: Conn, account_id: int) -> int:
    return await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", account_id)


async def journal(conn: Conn, account_id: int, after: int, limit: int) -> list[asyncpg.Record]:
    """Lines of one account after line ``after``, oldest first, with the running balance."""
    return await conn.fetch(
        """SELECT * FROM (
               SELECT l.id AS line_id, l.entry_id, l.amount, e.kind, e.fund_id, e.grant_id, e.reference, e.memo,
                      e.effective_on, e.created_at, (sum(l.amount) OVER (ORDER BY l.id))::bigint AS balance_after,
                      (SELECT array_agg(ARRAY[o.account_id::text, o.amount::text] ORDER BY o.id)
                         FROM journal_lines o WHERE o.entry_id = l.entry_id AND o.id <> l.id) AS counterparts
                 FROM journal_lines l JOIN journal_entries e ON e.id = l.entry_id
                WHERE l.account_id = $1) j
            WHERE line_id > $2 ORDER BY line_id LIMIT $3""",
        account_id,
        after,
        limit,
    )


# -- funds -------------------------------------------------------------------------
async def insert_fund(
    conn: asyncpg.Connection, fund_id: uuid.UUID, name: str, source_kind: str, fiscal_year: int, opened_on: date
) -> int:
    await conn.execute(
        "INSERT INTO funds (id, name, source_kind, fiscal_year, opened_on) VALUES ($1, $2, $3, $4, $5)",
        fund_id,
        name,
        source_kind,
        fiscal_year,
        opened_on,
    )
    return await conn.fetchval(
        "INSERT INTO accounts (kind, fund_id, name) VALUES ('fund', $1, $2) RETURNING id", fund_id, name
    )


_FUND = """SELECT f.*, a.id AS account_id, a.balance AS available_fen
             FROM funds f JOIN accounts a ON a.kind = 'fund' AND a.fund_id = f.id WHERE f.id = $1"""


async def get_fund(conn: Conn, fund_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(_FUND, fund_id)


async def lock_fund(conn: asyncpg.Connection, fund_id: uuid.UUID) -> asyncpg.Record | None:
    """Lock the fund row, then read it with its balance in a NEW statement: under READ COMMITTED a
    locking SELECT that waited re-reads only the locked row, not the rows it joins (the balance)."""
    if not await conn.fetchval("SELECT true FROM funds WHERE id = $1 FOR NO KEY UPDATE", fund_id):
        return None
    return await conn.fetchrow(_FUND, fund_id)


async def close_fund(conn: asyncpg.Connection, fund_id: uuid.UUID, on: date) -> None:
    await conn.execute("UPDATE funds SET status = 'closed', closed_on = $2 WHERE id = $1", fund_id, on)


async def committed(conn: Conn, fund_id: uuid.UUID) -> int:
    return await conn.fetchval(
        "SELECT coalesce(sum(balance), 0)::bigint FROM accounts WHERE kind = 'grant' AND fund_id = $1", fund_id
    )


_FIGURES = """
WITH f AS (
    SELECT * FROM funds
     WHERE ($1::uuid[] IS NULL OR id = ANY ($1)) AND ($2::text IS NULL OR source_kind = $2)
       AND ($3::int IS NULL OR fiscal_year = $3)
       AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid))
     ORDER BY created_at, id LIMIT $6),
sums AS (
    SELECT e.fund_id, a.kind, sum(l.amount) AS net,
           coalesce(sum(-l.amount) FILTER (WHERE l.amount < 0), 0) AS taken_out,
           coalesce(sum(l.amount) FILTER (WHERE l.amount > 0), 0) AS put_in
      FROM journal_entries e JOIN journal_lines l ON l.entry_id = e.id JOIN accounts a ON a.id = l.account_id
     WHERE e.fund_id IN (SELECT id FROM f)
     GROUP BY e.fund_id, a.kind)
SELECT f.*, fa.id AS account_id,
       coalesce((SELECT -net FROM sums s WHERE s.fund_id = f.id AND s.kind = 'source'), 0)::bigint AS total_fen,
       coalesce((SELECT taken_out FROM sums s WHERE s.fund_id = f.id AND s.kind = 'source'), 0)::bigint
           AS appropriated_fen,
       coalesce((SELECT put_in FROM sums s WHERE s.fund_id = f.id AND s.kind = 'source'), 0)::bigint AS returned_fen,
       coalesce((SELECT net FROM sums s WHERE s.fund_id = f.id AND s.kind = 'fund'), 0)::bigint AS available_fen,
       coalesce((SELECT net FROM sums s WHERE s.fund_id = f.id AND s.kind = 'grant'), 0)::bigint AS committed_fen,
       coalesce((SELECT net FROM sums s WHERE s.fund_id = f.id AND s.kind = 'beneficiary'), 0)::bigint AS disbursed_fen,
       (SELECT count(*) FROM grants g WHERE g.fund_id = f.id) AS grants
  FROM f JOIN accounts fa ON fa.kind = 'fund' AND fa.fund_id = f.id
 ORDER BY f.created_at, f.id
"""


async def fund_figures(
    conn: Conn,
    fund_ids: list[uuid.UUID] | None = None,
    source_kind: str | None = None,
    fiscal_year: int | None = None,
    *,
    after: tuple[Any, uuid.UUID] | None = None,
    limit: int | None = None,
) -> list[asyncpg.Record]:
    """Funds with their money derived from the journal lines (not from cached balances), by (created_at, id)
    after ``after``."""
    return await conn.fetch(_FIGURES, fund_ids, source_kind, fiscal_year, *(after or (None, None)), limit)


def figures_of(row: asyncpg.Record) -> FundFigures:
    return FundFigures(row["total_fen"], row["available_fen"], row["committed_fen"], row["disbursed_fen"])


# -- beneficiaries -------------------------------------------------------------------
async def upsert_beneficiary(
    conn: asyncpg.Connection, kind: str, ident: str, name: str, region_code: str | None
) -> tuple[int, bool]:
    """(account id, created?) — the latest name wins; a region, once known, stays."""
    created = await conn.fetchval(
        """INSERT INTO beneficiaries (kind, id, name, region_code) VALUES ($1, $2, $3, $4)
           ON CONFLICT (kind, id) DO UPDATE SET name = EXCLUDED.name,
                  region_code = coalesce(beneficiaries.region_code, EXCLUDED.region_code), updated_at = now()
           RETURNING (xmax = 0)""",
        kind,
        ident,
        name,
        region_code,
    )
    account_id = await conn.fetchval(
        """INSERT INTO accounts (kind, beneficiary_kind, beneficiary_id, name) VALUES ('beneficiary', $1, $2, $3)
           ON CONFLICT (beneficiary_kind, beneficiary_id) WHERE kind = 'beneficiary' DO NOTHING RETURNING id""",
        kind,
        ident,
        name,
    )
    if account_id is None:
        account_id = await beneficiary_account(conn, kind, ident)
    return account_id, bool(created)


async def beneficiary_account(conn: Conn, kind: str, ident: str) -> int | None:
    return await conn.fetchval(
        "SELECT id FROM accounts WHERE kind = 'beneficiary' AND beneficiary_kind = $1 AND beneficiary_id = $2",
        kind,
        ident,
    )


async def get_beneficiary(conn: Conn, kind: str, ident: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT b.*, a.id AS account_id, a.balance AS received_fen FROM beneficiaries b
             JOIN accounts a ON a.kind = 'beneficiary' AND a.beneficiary_kind = b.kind AND a.beneficiary_id = b.id
            WHERE b.kind = $1 AND b.id = $2""",
        kind,
        ident,
    )


async def beneficiary_report(
    conn: Conn,
    kind: str | None = None,
    ident: str | None = None,
    *,
    regions: list[str] | None = None,
    after: tuple[str, str] | None = None,
    limit: int = 1,
) -> list[asyncpg.Record]:
    """Payees with their money, by (kind, id) after ``after``, within ``regions`` when given."""
    return await conn.fetch(
        """SELECT b.kind, b.id, b.name, b.region_code, a.id AS account_id,
                  count(g.id) AS grants,
                  coalesce(sum(g.amount_fen - g.released_fen), 0)::bigint AS granted_fen,
                  coalesce((SELECT sum(ga.balance) FROM accounts ga JOIN grants gg ON gg.id = ga.grant_id
                             WHERE ga.kind = 'grant' AND gg.beneficiary_kind = b.kind AND gg.beneficiary_id = b.id),
                           0)::bigint AS outstanding_fen,
                  coalesce((SELECT sum(l.amount) FROM journal_lines l WHERE l.account_id = a.id), 0)::bigint
                      AS disbursed_fen
             FROM beneficiaries b
             JOIN accounts a ON a.kind = 'beneficiary' AND a.beneficiary_kind = b.kind AND a.beneficiary_id = b.id
             LEFT JOIN grants g ON g.beneficiary_kind = b.kind AND g.beneficiary_id = b.id
            WHERE ($1::text IS NULL OR b.kind = $1) AND ($2::text IS NULL OR b.id = $2)
              AND ($4::text[] IS NULL OR b.region_code = ANY ($4))
              AND ($5::text IS NULL OR (b.kind, b.id) > ($5, $6::text))
            GROUP BY b.kind, b.id, a.id
            ORDER BY b.kind, b.id LIMIT $3""",
        kind,
        ident,
        limit,
        regions,
        *(after or (None, None)),
    )


# -- membership's branches (where each is) ---------------------------------------------
async def branch_region(conn: Conn, branch_id: str) -> str | None:
    return await conn.fetchval("SELECT region_code FROM branches WHERE id = $1", branch_id)


async def record_branches(conn: asyncpg.Connection, places: list[tuple[str, str]]) -> None:
    """(branch id, region code) in event order: the last word on a branch wins."""
    await conn.executemany(
        """INSERT INTO branches (id, region_code) VALUES ($1, $2)
           ON CONFLICT (id) DO UPDATE SET region_code = EXCLUDED.region_code, updated_at = now()""",
        places,
    )


# -- grants --------------------------------------------------------------------------
async def insert_grant(
    conn: asyncpg.Connection,
    *,
    grant_id: uuid.UUID,
    fund_id: uuid.UUID,
    beneficiary_kind: str,
    beneficiary_id: str,
    beneficiary_name: str,
    purpose: str,
    region_code: str | None,
    amount_fen: int,
    approved_on: date,
    claim_id: uuid.UUID | None = None,
) -> int:
    await conn.execute(
        """INSERT INTO grants (id, fund_id, beneficiary_kind, beneficiary_id, beneficiary_name, purpose, region_code,
                               amount_fen, approved_on, claim_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        grant_id,
        fund_id,
        beneficiary_kind,
        beneficiary_id,
        beneficiary_name,
        purpose,
        region_code,
        amount_fen,
        approved_on,
        claim_id,
    )
    return await conn.fetchval(
        "INSERT INTO accounts (kind, fund_id, grant_id, name) VALUES ('grant', $1, $2, $3) RETURNING id",
        fund_id,
        grant_id,
        f"{beneficiary_name}: {purpose}"[:200],
    )


_GRANT = """SELECT g.*, a.id AS account_id, a.balance AS remaining_fen, f.source_kind, f.fiscal_year,
                   f.status AS fund_status, b.id AS beneficiary_account_id
              FROM grants g JOIN accounts a ON a.kind = 'grant' AND a.grant_id = g.id
              JOIN funds f ON f.id = g.fund_id
              JOIN accounts b ON b.kind = 'beneficiary' AND b.beneficiary_kind = g.beneficiary_kind
                             AND b.beneficiary_id = g.beneficiary_id
             WHERE g.id = $1"""


async def get_grant(conn: Conn, grant_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(_GRANT, grant_id)


async def lock_grant(conn: asyncpg.Connection, grant_id: uuid.UUID) -> asyncpg.Record | None:
    """Lock the grant row, then read it with its balance in a new statement (see ``lock_fund``)."""
    if not await conn.fetchval("SELECT true FROM grants WHERE id = $1 FOR NO KEY UPDATE", grant_id):
        return None
    return await conn.fetchrow(_GRANT, grant_id)


async def grant_head(conn: Conn, grant_id: uuid.UUID) -> asyncpg.Record | None:
    """A grant's fund and region, unlocked: enough to authorise before taking locks in the one order."""
    return await conn.fetchrow("SELECT fund_id, region_code FROM grants WHERE id = $1", grant_id)


async def list_grants(
    conn: Conn,
    *,
    fund_id: uuid.UUID | None,
    beneficiary_kind: str | None,
    beneficiary_id: str | None,
    status: str | None,
    regions: list[str] | None,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT g.*, a.id AS account_id, a.balance AS remaining_fen, f.source_kind, f.fiscal_year,
                  f.status AS fund_status
             FROM grants g JOIN accounts a ON a.kind = 'grant' AND a.grant_id = g.id JOIN funds f ON f.id = g.fund_id
            WHERE ($1::uuid IS NULL OR g.fund_id = $1) AND ($2::text IS NULL OR g.beneficiary_kind = $2)
              AND ($3::text IS NULL OR g.beneficiary_id = $3) AND ($4::text IS NULL OR g.status = $4)
              AND ($5::text[] IS NULL OR g.region_code = ANY ($5))
              AND ($6::timestamptz IS NULL OR (g.created_at, g.id) > ($6, $7::uuid))
            ORDER BY g.created_at, g.id LIMIT $8""",
        fund_id,
        beneficiary_kind,
        beneficiary_id,
        status,
        regions,
        *(after or (None, None)),
        limit,
    )


async def pay_grant(
    conn: asyncpg.Connection,
    grant_id: uuid.UUID,
    amount_fen: int,
    *,
    on: date,
    memo: str | None,
    disbursement_id: uuid.UUID,
    reference: uuid.UUID | None,
    regions: list[str] | None,
) -> asyncpg.Record:
    """A payment in one round trip (the database's ``pay_grant``): ``outcome`` is paid, not_found (no such
    grant within ``regions``), not_open or insufficient, with the grant's facts and remaining balance."""
    return await conn.fetchrow(
        "SELECT * FROM pay_grant($1, $2, $3, $4, $5, $6, $7)",
        grant_id,
        amount_fen,
        on,
        memo,
        disbursement_id,
        reference,
        regions,
    )


async def record_revocation(conn: asyncpg.Connection, grant_id: uuid.UUID, released_fen: int, on: date) -> None:
    await conn.execute(
        "UPDATE grants SET released_fen = released_fen + $2, status = 'revoked', closed_on = $3 WHERE id = $1",
        grant_id,
        released_fen,
        on,
    )


async def disbursements(conn: Conn, grant_id: uuid.UUID, after_entry: int | None, limit: int) -> list[asyncpg.Record]:
    """Payments under a grant in the order they were booked (by journal entry)."""
    return await conn.fetch(
        "SELECT * FROM disbursements WHERE grant_id = $1 AND ($2::bigint IS NULL OR entry_id > $2) "
        "ORDER BY entry_id LIMIT $3",
        grant_id,
        after_entry,
        limit,
    )


# -- settlements (the bank's reports, through the intake) ------------------------------------
async def lock_disbursement(conn: asyncpg.Connection, disbursement_id: uuid.UUID) -> asyncpg.Record | None:
    """A disbursement with its grant's region and fund, locked (its settlement is decided under the lock)."""
    return await conn.fetchrow(
        "SELECT d.*, g.region_code, g.fund_id FROM disbursements d JOIN grants g ON g.id = d.grant_id "
        "WHERE d.id = $1 FOR UPDATE OF d",
        disbursement_id,
    )


async def set_settled(
    conn: asyncpg.Connection, disbursement_id: uuid.UUID, settled_at: datetime, bank_reference: str
) -> None:
    await conn.execute(
        "UPDATE disbursements SET settled_at = $2, bank_reference = $3 WHERE id = $1",
        disbursement_id,
        settled_at,
        bank_reference,
    )


# -- subsidy rules, routes and claims ----------------------------------------------------
async def rules(conn: Conn, category: str | None = None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM subsidy_rules WHERE ($1::text IS NULL OR category = $1) ORDER BY category, effective_from",
        category,
    )


def as_rules(rows: list[asyncpg.Record]) -> list[Rule]:
    return [Rule(r["category"], r["effective_from"], r["rate_fen"]) for r in rows]


async def get_rule(conn: Conn, category: str, effective_from: date) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM subsidy_rules WHERE category = $1 AND effective_from = $2", category, effective_from
    )


async def upsert_rule(
    conn: asyncpg.Connection, category: str, effective_from: date, rate_fen: int, note: str | None
) -> bool:
    """True when the rule is new."""
    return await conn.fetchval(
        """INSERT INTO subsidy_rules (category, effective_from, rate_fen, note, origin) VALUES ($1, $2, $3, $4, 'api')
           ON CONFLICT (category, effective_from) DO UPDATE
              SET rate_fen = EXCLUDED.rate_fen, note = EXCLUDED.note, origin = 'api', updated_at = now()
           RETURNING (xmax = 0)""",
        category,
        effective_from,
        rate_fen,
        note,
    )


async def delete_rule(conn: asyncpg.Connection, category: str, effective_from: date) -> bool:
    return (
        await conn.fetchval(
            "DELETE FROM subsidy_rules WHERE category = $1 AND effective_from = $2 RETURNING true",
            category,
            effective_from,
        )
        or False
    )


async def seed_rules(conn: asyncpg.Connection, seeds: list[Rule]) -> bool:
    """Replace the seeded rules of each seeded category unless the API has set one; True if changed."""
    changed = False
    async with conn.transaction():
        await conn.execute("LOCK TABLE subsidy_rules IN SHARE ROW EXCLUSIVE MODE")
        for category in sorted({r.category for r in seeds}):
            if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM subsidy_rules WHERE category = $1 AND origin = 'api')", category
            ):
                continue
            want = {(r.effective_from, r.rate_fen) for r in seeds if r.category == category}
            have = {
                (r["effective_from"], r["rate_fen"])
                for r in await conn.fetch(
                    "SELECT effective_from, rate_fen FROM subsidy_rules WHERE category = $1", category
                )
            }
            if want == have:
                continue
            await conn.execute("DELETE FROM subsidy_rules WHERE category = $1", category)
            await conn.executemany(
                "INSERT INTO subsidy_rules (category, effective_from, rate_fen, note, origin) "
                "VALUES ($1, $2, $3, 'seed', 'seed')",
                [(category, d, fen) for d, fen in sorted(want)],
            )
            changed = True
    return changed


async def set_route(conn: asyncpg.Connection, category: str, year: int | None, fund_id: uuid.UUID) -> None:
    await conn.execute(
        """INSERT INTO subsidy_routes (category, year, fund_id) VALUES ($1, $2, $3)
           ON CONFLICT ON CONSTRAINT subsidy_route_unique
           DO UPDATE SET fund_id = EXCLUDED.fund_id, updated_at = now()""",
        category,
        year,
        fund_id,
    )


async def routes(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT r.*, f.name AS fund_name, f.source_kind, f.fiscal_year, f.status AS fund_status
             FROM subsidy_routes r JOIN funds f ON f.id = r.fund_id ORDER BY r.category, r.year NULLS FIRST"""
    )


async def route_for(conn: Conn, category: str, year: int) -> uuid.UUID | None:
    """The fund for this category and year, else the category's any-year fund."""
    return await conn.fetchval(
        """SELECT fund_id FROM subsidy_routes WHERE category = $1 AND (year = $2 OR year IS NULL)
            ORDER BY year NULLS LAST LIMIT 1""",
        category,
        year,
    )


async def claim_by_session(conn: Conn, session_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM subsidy_claims WHERE session_id = $1", session_id)


async def get_claim(conn: Conn, claim_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM subsidy_claims WHERE id = $1" + (" FOR NO KEY UPDATE" if lock else ""), claim_id
    )


async def insert_claim(conn: asyncpg.Connection, claim: dict[str, Any]) -> None:
    columns = list(claim)
    await conn.execute(
        f"INSERT INTO subsidy_claims ({', '.join(columns)}) "
        f"VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))})",
        *claim.values(),
    )


async def update_claim(conn: asyncpg.Connection, claim_id: uuid.UUID, changes: dict[str, Any]) -> None:
    columns = list(changes)
    sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
    await conn.execute(
        f"UPDATE subsidy_claims SET {sets}, attempts = attempts + 1, updated_at = now() WHERE id = $1",
        claim_id,
        *changes.values(),
    )


async def list_claims(
    conn: Conn,
    *,
    status: str | None,
    session_id: uuid.UUID | None,
    organiser_id: str | None,
    regions: list[str] | None,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT * FROM subsidy_claims
            WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR session_id = $2)
              AND ($3::text IS NULL OR organiser_id = $3) AND ($4::text[] IS NULL OR region_code = ANY ($4))
              AND ($5::timestamptz IS NULL OR (created_at, id) > ($5, $6::uuid))
            ORDER BY created_at, id LIMIT $7""",
        status,
        session_id,
        organiser_id,
        regions,
        *(after or (None, None)),
        limit,
    )


# -- the ledger check ------------------------------------------------------------------
async def ledger_check(conn: Conn) -> dict[str, Any]:
    """Every invariant of the ledger, checked from the stored rows; ``violations`` empty when sound."""
    violations: list[str] = []
    unbalanced = await conn.fetch(
        """SELECT e.id, coalesce(sum(l.amount), 0) AS total, count(l.id) AS n
             FROM journal_entries e LEFT JOIN journal_lines l ON l.entry_id = e.id
            GROUP BY e.id HAVING coalesce(sum(l.amount), 0) <> 0 OR count(l.id) < 2"""
    )
    violations += [f"entry {r['id']}: {r['n']} line(s) summing to {r['total']}" for r in unbalanced]
    drifted = await conn.fetch(
        """SELECT a.id, a.kind, a.balance, coalesce(s.total, 0) AS derived
             FROM accounts a
             LEFT JOIN (SELECT account_id, sum(amount) AS total FROM journal_lines GROUP BY account_id) s
               ON s.account_id = a.id
            WHERE a.balance <> coalesce(s.total, 0)"""
    )
    violations += [
        f"account {r['id']} ({r['kind']}): cached balance {r['balance']} != lines {r['derived']}" for r in drifted
    ]
    negative = await conn.fetch("SELECT id, kind, balance FROM accounts WHERE kind <> 'source' AND balance < 0")
    violations += [f"account {r['id']} ({r['kind']}) below zero: {r['balance']}" for r in negative]
    total = await conn.fetchval("SELECT coalesce(sum(balance), 0) FROM accounts")
    if total != 0:
        violations.append(f"balances of all accounts sum to {total}, not 0")
    funds = await fund_figures(conn)
    for row in funds:
        violations += [f"fund {row['id']}: {v}" for v in figures_of(row).violations()]
        if row["status"] == "closed" and (row["available_fen"] or row["committed_fen"]):
            violations.append(f"fund {row['id']} is closed but holds {row['available_fen']} + {row['committed_fen']}")
    grants = await conn.fetch(
        """SELECT g.id, g.status, g.amount_fen, g.paid_fen, g.released_fen, a.balance,
                  (SELECT coalesce(sum(d.amount_fen), 0) FROM disbursements d WHERE d.grant_id = g.id) AS disbursed,
                  (SELECT coalesce(sum(l.amount), 0) FROM journal_lines l JOIN journal_entries e ON e.id = l.entry_id
                    WHERE e.grant_id = g.id AND e.kind = 'disbursement' AND l.account_id <> a.id) AS paid_in_ledger
             FROM grants g JOIN accounts a ON a.kind = 'grant' AND a.grant_id = g.id"""
    )
    for g in grants:
        if g["balance"] != g["amount_fen"] - g["paid_fen"] - g["released_fen"]:
            violations.append(
                f"grant {g['id']}: account {g['balance']} != amount {g['amount_fen']} - paid "
                f"{g['paid_fen']} - released {g['released_fen']}"
            )
        if not (g["paid_fen"] == g["disbursed"] == g["paid_in_ledger"]):
            violations.append(
                f"grant {g['id']}: paid {g['paid_fen']}, disbursements {g['disbursed']}, "
                f"ledger {g['paid_in_ledger']} disagree"
            )
        if g["status"] != "open" and g["balance"] != 0:
            violations.append(f"grant {g['id']} is {g['status']} but still holds {g['balance']}")
        if g["status"] == "open" and g["balance"] == 0:
            violations.append(f"grant {g['id']} is open with nothing left to pay")
    claims = await conn.fetch(
        """SELECT c.id, c.persons, c.rate_fen, c.amount_fen, d.amount_fen AS paid
             FROM subsidy_claims c JOIN disbursements d ON d.id = c.disbursement_id WHERE c.status = 'paid'"""
    )
    for c in claims:
        if not (c["amount_fen"] == c["persons"] * c["rate_fen"] == c["paid"]):
            violations.append(
                f"claim {c['id']}: {c['persons']} × {c['rate_fen']} != amount {c['amount_fen']} or paid {c['paid']}"
            )
    counts = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM journal_entries) AS entries, (SELECT count(*) FROM journal_lines) AS lines,
                  (SELECT count(*) FROM accounts) AS accounts"""
    )
    return {
        "ok": not violations,
        "violations": violations,
        "funds": len(funds),
        "grants": len(grants),
        "paid_claims": len(claims),
        **dict(counts),
    }


# -- the subsidy saga in batches (one statement per step for a whole batch) ------------------------
async def claimed_sessions(conn: Conn, session_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these sessions already have a claim."""
    rows = await conn.fetch("SELECT session_id FROM subsidy_claims WHERE session_id = ANY ($1::uuid[])", session_ids)
    return {r["session_id"] for r in rows}


async def get_beneficiaries(conn: Conn, keys: list[tuple[str, str]]) -> dict[tuple[str, str], asyncpg.Record]:
    """``get_beneficiary`` for many (kind, id) at once; the ones not registered are missing."""
    rows = await conn.fetch(
        """SELECT b.*, a.id AS account_id, a.balance AS received_fen
             FROM unnest($1::text[], $2::text[]) AS k (kind, id)
             JOIN beneficiaries b ON b.kind = k.kind AND b.id = k.id
             JOIN accounts a ON a.kind = 'beneficiary' AND a.beneficiary_kind = b.kind AND a.beneficiary_id = b.id""",
        [k for k, _ in keys],
        [i for _, i in keys],
    )
    return {(r["kind"], r["id"]): r for r in rows}


async def routes_for(conn: Conn, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], uuid.UUID]:
    """``route_for`` for many (category, year) at once; the ones with no route are missing."""
    rows = await conn.fetch(
        """SELECT w.category, w.year,
                  (SELECT r.fund_id FROM subsidy_routes r WHERE r.category = w.category
                      AND (r.year = w.year OR r.year IS NULL) ORDER BY r.year NULLS LAST LIMIT 1) AS fund_id
             FROM unnest($1::text[], $2::int[]) AS w (category, year)""",
        [c for c, _ in wanted],
        [y for _, y in wanted],
    )
    return {(r["category"], r["year"]): r["fund_id"] for r in rows if r["fund_id"] is not None}


async def lock_funds(conn: asyncpg.Connection, fund_ids: list[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    """``lock_fund`` for many funds: the rows locked in id order (the one lock order: funds before grants and
    accounts, and several funds by id), then read with their balances in a new statement."""
    await conn.execute(
        "SELECT 1 FROM funds WHERE id = ANY ($1::uuid[]) ORDER BY id FOR NO KEY UPDATE", sorted(set(fund_ids))
    )
    rows = await conn.fetch(
        """SELECT f.*, a.id AS account_id, a.balance AS available_fen
             FROM funds f JOIN accounts a ON a.kind = 'fund' AND a.fund_id = f.id WHERE f.id = ANY ($1::uuid[])""",
        fund_ids,
    )
    return {r["id"]: r for r in rows}


async def touch_beneficiaries(conn: asyncpg.Connection, payees: list[tuple[str, str, str, str | None]]) -> None:
    """``upsert_beneficiary`` of registered payees (kind, id, name, region), as a grant to each does: the latest
    name wins, a region once known stays. Each payee once."""
    await conn.execute(
        """INSERT INTO beneficiaries (kind, id, name, region_code)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
           ON CONFLICT (kind, id) DO UPDATE SET name = EXCLUDED.name,
                  region_code = coalesce(beneficiaries.region_code, EXCLUDED.region_code), updated_at = now()""",
        *(list(column) for column in zip(*payees, strict=True)),
    )


async def insert_paid_grants(conn: asyncpg.Connection, grants: list[dict[str, Any]]) -> dict[uuid.UUID, int]:
    """Grants approved and paid in full at once (a subsidy's): the rows, already closed and paid, and their
    accounts; returns each grant's account id. The journal entries that move the money come after."""
    columns = ["id", "fund_id", "beneficiary_kind", "beneficiary_id", "beneficiary_name", "purpose", "region_code"]
    await conn.execute(
        """INSERT INTO grants (id, fund_id, beneficiary_kind, beneficiary_id, beneficiary_name, purpose, region_code,
                               amount_fen, paid_fen, status, approved_on, closed_on, claim_id)
           SELECT id, fund_id, bk, bi, bn, purpose, region, amount, amount, 'closed', paid_on, paid_on, claim_id
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::bigint[], $9::date[], $10::uuid[])
                  WITH ORDINALITY AS g (id, fund_id, bk, bi, bn, purpose, region, amount, paid_on, claim_id, n)
            ORDER BY n""",
        *([g[c] for g in grants] for c in columns),
        [g["amount_fen"] for g in grants],
        [g["paid_on"] for g in grants],
        [g["claim_id"] for g in grants],
    )
    rows = await conn.fetch(
        """INSERT INTO accounts (kind, fund_id, grant_id, name)
           SELECT 'grant', fund_id, grant_id, name FROM unnest($1::uuid[], $2::uuid[], $3::text[])
                  WITH ORDINALITY AS a (fund_id, grant_id, name, n) ORDER BY n
           RETURNING id, grant_id""",
        [g["fund_id"] for g in grants],
        [g["id"] for g in grants],
        [f"{g['beneficiary_name']}: {g['purpose']}"[:200] for g in grants],
    )
    return {r["grant_id"]: r["id"] for r in rows}


async def post_entries(conn: asyncpg.Connection, entries: list[dict[str, Any]]) -> list[int]:
    """Many balanced journal entries through the database's ``post_entries`` (which checks each as
    ``post_entry`` does); each entry: kind, fund_id, grant_id, reference, memo, on, lines [(account, amount)].
    Returns the entries' ids in the given order."""
    line_entries, accounts, amounts = [], [], []
    for n, entry in enumerate(entries, start=1):
        for account_id, amount in entry["lines"]:
            line_entries.append(n)
            accounts.append(account_id)
            amounts.append(amount)
    return list(
        await conn.fetchval(
            "SELECT post_entries($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::date[],"
            " $7::int[], $8::bigint[], $9::bigint[])",
            *([e[c] for e in entries] for c in ("kind", "fund_id", "grant_id", "reference", "memo", "on")),
            line_entries,
            accounts,
            amounts,
        )
    )


async def insert_disbursements(conn: asyncpg.Connection, payments: list[dict[str, Any]]) -> None:
    """Payments already posted to the journal (id, grant_id, amount_fen, paid_on, memo, entry_id)."""
    await conn.execute(
        """INSERT INTO disbursements (id, grant_id, amount_fen, paid_on, memo, entry_id)
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::date[], $5::text[], $6::bigint[])""",
        *([p[c] for p in payments] for c in ("id", "grant_id", "amount_fen", "paid_on", "memo", "entry_id")),
    )


_CLAIM_COLUMNS = {  # column → its array type for unnest (member_ids goes as text: unnest cannot take uuid[][])
    "id": "uuid",
    "session_id": "uuid",
    "event_id": "uuid",
    "programme_id": "uuid",
    "programme_name": "text",
    "session_number": "int",
    "organiser_id": "text",
    "organiser_kind": "text",
    "organiser_name": "text",
    "category": "text",
    "region_code": "text",
    "city_code": "text",
    "persons": "int",
    "member_ids": "text",
    "completed_on": "date",
    "status": "text",
    "rate_fen": "bigint",
    "amount_fen": "bigint",
    "reason": "text",
    "detail": "text",
    "fund_id": "uuid",
    "grant_id": "uuid",
    "disbursement_id": "uuid",
}
_INSERT_CLAIMS = (
    f"INSERT INTO subsidy_claims ({', '.join(_CLAIM_COLUMNS)}) SELECT "
    + ", ".join("member_ids::uuid[]" if c == "member_ids" else c for c in _CLAIM_COLUMNS)
    + " FROM unnest("
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_CLAIM_COLUMNS.values()))
    + f") AS c ({', '.join(_CLAIM_COLUMNS)})"
)


async def insert_claims(conn: asyncpg.Connection, claims: list[dict[str, Any]]) -> None:
    """``insert_claim`` for many claims in one statement."""

    def value(claim: dict[str, Any], column: str) -> Any:
        if column == "member_ids":
            return "{" + ",".join(str(m) for m in claim["member_ids"]) + "}"
        return claim[column]

    await conn.execute(_INSERT_CLAIMS, *([value(c, column) for c in claims] for column in _CLAIM_COLUMNS))
