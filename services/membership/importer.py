"""Bulk import of members (``POST /v1/members:import``): streamed, validated, written in batches.

The request body is read chunk by chunk and never held whole: bytes → text (UTF-8 with or
without BOM, or GB18030, detected at the first non-ASCII byte unless the Content-Type says)
→ CSV records (or NDJSON lines) → validated rows → batches. Each batch is one transaction:
COPY into a temporary staging table, ``INSERT … ON CONFLICT (id_hash) DO NOTHING`` into
``members`` (so a person already a member, or imported by a concurrent upload, is reported,
not duplicated), the ``member.joined`` events of the rows inserted COPYed into the outbox,
the per-row report, and the import's counters. Two batches are written at once, on two
connections, while the next is parsed, so Python and PostgreSQL work at the same time.

Importing the same file again changes nothing: every row is then "already a member".
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import hashlib
import logging
import operator
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from services.membership import domain, store
from services.membership.pii import Vault, home_prefecture, uuid7_batch
from shared import outbox
from shared.auth import Principal
from shared.clock import today_cn
from shared.errors import DomainError, Invalid, NotFound, OutOfScope
from shared.events import encode_value, json_time
from shared.events.envelope import new_traceparents
from shared.events.membership import MemberJoined
from shared.identifiers import mask_id_number, mask_phone

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # a line (or a quoted CSV record) longer than 1 MiB ends the import

# -- columns -----------------------------------------------------------------------
COLUMNS = {
    "name": ("name", "姓名"),
    "id_number": ("id_number", "身份证号", "身份证号码", "公民身份号码", "证件号码"),
    "phone": ("phone", "mobile", "手机号", "手机号码", "联系电话"),
    "employment_form": ("employment_form", "就业形态", "用工形式"),
    "occupation": ("occupation", "职业", "工种"),
    "skill_level": ("skill_level", "技能等级"),
    "branch_id": ("branch_id", "工会id", "工会编号"),
    "joined_on": ("joined_on", "入会日期", "入会时间"),
}
ALIASES = {alias: canonical for canonical, names in COLUMNS.items() for alias in names}
REQUIRED = ("name", "id_number")
FIELDS = tuple(COLUMNS)  # the order the validator takes them in


class ImportFailed(Exception):
    """The upload cannot be read any further (bad header, unreadable encoding, line too long)."""


# -- bytes → text -------------------------------------------------------------------
class TextDecoder:
    """Incremental bytes → str. UTF-8 (a BOM is dropped) or GB18030, as declared or detected.

    Undeclared input is ASCII until its first non-ASCII byte, and ASCII reads the same in
    both encodings; at that byte the following bytes decide: valid UTF-8 → UTF-8, else GB18030.
    """

    def __init__(self, charset: str | None = None):
        self.encoding: str | None = None
        self._decoder: codecs.IncrementalDecoder | None = None
        self._held = b""
        self._start = True
        if charset:
            name = charset.strip().lower().replace("_", "-")
            if name in ("utf-8", "utf8"):
                self._use("utf-8")
            elif name in ("gb18030", "gbk", "gb2312", "cp936"):
                self._use("gb18030")
            else:
                raise ImportFailed(f"charset {charset!r} is not supported: send UTF-8 or GB18030")

    def _use(self, encoding: str) -> None:
        self.encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="strict")

    def feed(self, data: bytes, final: bool = False) -> str:
        if self._start:
            data = self._held + data
            if len(data) < 4 and not final:
                self._held = data
                return ""
            self._held = b""
            self._start = False
            if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
                raise ImportFailed("UTF-16 is not supported: save the sheet as CSV UTF-8 (or GB18030)")
            if data[:3] == codecs.BOM_UTF8:
                data = data[3:]
                if self.encoding is None:
                    self._use("utf-8")
            elif data[:4] == b"\x84\x31\x95\x33":  # GB18030's own byte order mark
                data = data[4:]
                if self.encoding is None:
                    self._use("gb18030")
        try:
            if self._decoder is not None:
                return self._decoder.decode(data, final)
            return self._detect(data, final)
        except UnicodeDecodeError:
            raise ImportFailed(
                f"the file is not valid {self.encoding or 'UTF-8 or GB18030'}: "
                "send UTF-8 (with or without BOM) or GB18030"
            ) from None

    def _detect(self, data: bytes, final: bool) -> str:
        data = self._held + data
        self._held = b""
        if data.isascii():
            return data.decode("ascii")
        first = next(i for i, b in enumerate(data) if b >= 0x80)
        window = data[first : first + 4096]
        if len(window) < 64 and not final:  # too little to judge: wait for more
            self._held = data[first:]
            return data[:first].decode("ascii")
        probe = codecs.getincrementaldecoder("utf-8")()
        try:
            probe.decode(window, final and len(window) == len(data) - first)
            self._use("utf-8")
        except UnicodeDecodeError:
            self._use("gb18030")
        assert self._decoder is not None  # _use just set it
        return data[:first].decode("ascii") + self._decoder.decode(data[first:], final)


# -- text → records -------------------------------------------------------------------
class CsvRecords:
    """Incremental CSV: text in, complete records out (quoted fields may hold newlines)."""

    def __init__(self):
        self._tail = ""
        self._open: list[str] = []  # lines of a record whose quoted field is still open
        self._open_quotes = 0
        self._open_size = 0

    def feed(self, text: str, final: bool = False) -> list[list[str]]:
        text = self._tail + text
        if final:
            self._tail = ""
            parts = text.split("\n")
            lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        else:
            cut = text.rfind("\n")
            if cut < 0:
                self._tail = text
                if len(text) > MAX_LINE:
                    raise ImportFailed("a line is longer than 1 MiB")
                return []
            self._tail = text[cut + 1 :]
            lines = [p + "\n" for p in text[:cut].split("\n")]
        ready: list[str] = []
        for line in lines:
            quotes = line.count('"')
            if self._open or quotes & 1:
                self._open.append(line)
                self._open_quotes += quotes
                self._open_size += len(line)
                if self._open_quotes & 1 == 0:
                    ready.append("".join(self._open))
                    self._open, self._open_quotes, self._open_size = [], 0, 0
                elif self._open_size > MAX_LINE:
                    raise ImportFailed("a quoted field is never closed (or a record is longer than 1 MiB)")
            else:
                ready.append(line)
        if final and self._open:
            ready.append("".join(self._open))
            self._open = []
        try:  # a reader a feed: it is handed complete records only, so it carries no state between feeds
            return [r for r in csv.reader(ready) if r and any(r)]
        except csv.Error as exc:
            raise ImportFailed(f"CSV is malformed: {exc}") from None


# -- rows -------------------------------------------------------------------------------
class Row(NamedTuple):
    """A row that met the domain's rules (``domain.MemberRules``, the join's), ready to be staged."""

    row: int
    member_id: uuid.UUID
    id_hash: bytes
    member: domain.NewMember


@dataclass(slots=True)
class Rejected:
    row: int
    field: str
    reason: str
    outcome: str = "rejected"
    member_id: uuid.UUID | None = None


def refusal(row: int, exc: DomainError) -> Rejected:
    """A domain refusal as a report row: the field it names, and the reason (never the value)."""
    if isinstance(exc, Invalid):
        return Rejected(row, exc.field, exc.reason)
    if isinstance(exc, (OutOfScope, NotFound)):
        return Rejected(row, "branch_id", "no such branch in your organisation scope")
    return Rejected(row, "branch_id", exc.detail or exc.title)


# -- the import ---------------------------------------------------------------------------
@dataclass
class Counts:
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    already: int = 0
    bytes: int = 0


@dataclass
class Importer:
    pool: asyncpg.Pool
    vault: Vault
    principal: Principal
    import_id: uuid.UUID
    fmt: str  # "csv" | "ndjson"
    charset: str | None = None
    default_branch: uuid.UUID | None = None
    batch_rows: int = 5000
    writers: int = 2
    trace_id: str | None = None
    today: date | None = None  # in China (shared.clock.today_cn), the default joining date
    counts: Counts = field(default_factory=Counts)
    ignored_columns: list[str] = field(default_factory=list)
    _branches: dict[uuid.UUID, asyncpg.Record | None] = field(default_factory=dict)

    def __post_init__(self):
        self.rules = domain.MemberRules(self.today or today_cn(), self.default_branch)
        self.decoder = TextDecoder(self.charset) if self.fmt == "csv" else None
        self.csv = CsvRecords() if self.fmt == "csv" else None
        self.header: dict[str, int] | None = None
        self._ndjson_tail = b""
        self._ndjson_start = True

    # reading
    def _csv_rows(self, records: list[list[str]]) -> Iterable[tuple[int, object]]:
        for record in records:
            if self.header is None:
                self._read_header(record)
                continue
            self.counts.rows += 1
            yield self.counts.rows, record

    def _read_header(self, record: list[str]) -> None:
        header: dict[str, int] = {}
        for i, raw in enumerate(record):
            key = raw.strip().lstrip("\ufeff").lower()
            canonical = ALIASES.get(key)
            if canonical is None:
                if key:
                    self.ignored_columns.append(raw.strip()[:50])
            elif canonical not in header:
                header[canonical] = i
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ImportFailed(
                f"the header has no {' or '.join(missing)} column (first line must name the columns: "
                f"{', '.join(COLUMNS)})"
            )
        self.header = header
        self._width = len(record)
        self._pick = operator.itemgetter(*(header.get(name, -1) for name in FIELDS))

    def _ndjson_rows(self, data: bytes, final: bool) -> Iterable[tuple[int, object]]:
        data = self._ndjson_tail + data
        if self._ndjson_start and data:
            if len(data) < 3 and not final:
                self._ndjson_tail = data
                return
            self._ndjson_start = False
            if data[:3] == codecs.BOM_UTF8:
                data = data[3:]
        cut = len(data) if final else data.rfind(b"\n") + 1
        self._ndjson_tail = data[cut:]
        if len(self._ndjson_tail) > MAX_LINE:
            raise ImportFailed("a line is longer than 1 MiB")
        for line in data[:cut].split(b"\n"):
            if not line.strip():
                continue
            self.counts.rows += 1
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                value = None
            yield self.counts.rows, value if isinstance(value, dict) else None

    async def run(self, chunks: AsyncIterator[bytes]) -> None:
        """Read every chunk, write every batch; raises ImportFailed or the database's error.

        Up to ``writers`` batches are written at once (each its own transaction and connection)
        while the next one is parsed: PostgreSQL works on two batches while Python reads the third."""
        digest = hashlib.sha256()
        batch: list[tuple[int, object]] = []
        writing: list[asyncio.Task] = []

        async def flush():
            nonlocal batch
            if not batch:
                return
            ready = self._prepare(batch)
            batch = []
            while len(writing) >= self.writers:
                await writing.pop(0)
            writing.append(asyncio.ensure_future(self._write(*ready)))

        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                digest.update(chunk)
                self.counts.bytes += len(chunk)
                for item in self._rows(chunk, final=False):
                    batch.append(item)
                    if len(batch) >= self.batch_rows:
                        await flush()
            for item in self._rows(b"", final=True):
                batch.append(item)
            if self.fmt == "csv" and self.header is None:
                raise ImportFailed("the file is empty: the first line must name the columns")
            await flush()
            while writing:
                await writing.pop(0)
        finally:
            if writing:  # a failure while batches were being written: let them finish or fail
                await asyncio.gather(*writing, return_exceptions=True)
        self.sha256 = digest.digest()

    def _rows(self, chunk: bytes, final: bool) -> Iterable[tuple[int, object]]:
        if self.csv is not None and self.decoder is not None:  # CSV
            return self._csv_rows(self.csv.feed(self.decoder.feed(chunk, final), final))
        return self._ndjson_rows(chunk, final)

    def _fields(self, record) -> tuple | list | Rejected:
        """The row's values in FIELDS order (None when absent)."""
        if self.fmt == "csv":
            width = self._width
            if len(record) < width:
                record.extend([""] * (width - len(record)))
            record.append("")  # index -1: the columns the header does not have
            return self._pick(record)
        values = []
        for name in FIELDS:
            value = record.get(name)
            if value is None or type(value) is str:
                values.append(value)
            elif type(value) is int and name == "skill_level":
                values.append(str(value))
            else:
                return Rejected(0, name, "must be a string" + (" or an integer" if name == "skill_level" else ""))
        return values

    def _prepare(self, batch: list[tuple[int, object]]) -> tuple[list[Row], list[Rejected], int]:
        ids = uuid7_batch(len(batch))
        good: list[Row] = []
        bad: list[Rejected] = []
        rules, fields, lookup_hash = self.rules, self._fields, self.vault.lookup_hash
        for (row, record), member_id in zip(batch, ids, strict=True):
            if record is None:
                bad.append(Rejected(row, "<row>", "not a JSON object"))
                continue
            values = fields(record)
            if isinstance(values, Rejected):
                values.row = row
                bad.append(values)
                continue
            try:
                member = rules(*values)
            except Invalid as exc:
                bad.append(Rejected(row, exc.field, exc.reason))
                continue
            good.append(Row(row, member_id, lookup_hash(member.number), member))
        return good, bad, batch[-1][0]

    async def _write(self, good: list[Row], bad: list[Rejected], last_row: int) -> None:
        for attempt in range(4):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await self._write_tx(conn, list(good), list(bad), last_row)
                return
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == 3:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    async def _write_tx(self, conn: asyncpg.Connection, good: list[Row], bad: list[Rejected], last_row: int) -> None:
        # The branches named in this batch, share-locked so none is merged or dissolved under us, each
        # judged once by the join's rules (in scope, active); the founding date is judged per row.
        branches = await store.lock_branches(conn, [r.member.branch_id for r in good])
        open_to: dict[uuid.UUID, Any] = {}
        for branch_id in {r.member.branch_id for r in good}:
            try:
                open_to[branch_id] = domain.branch_open_to(branches.get(branch_id), self.principal)
            except DomainError as exc:
                open_to[branch_id] = exc
        staged: dict[bytes, Row] = {}
        dupes: list[Row] = []
        for r in good:
            branch = open_to[r.member.branch_id]
            try:
                if isinstance(branch, DomainError):
                    raise branch
                domain.check_join_date(r.member.joined_on, branch)
            except DomainError as exc:
                bad.append(refusal(r.row, exc))
                continue
            if r.id_hash in staged:
                dupes.append(r)
            else:
                staged[r.id_hash] = r
        inserted: set[uuid.UUID] = set()
        if staged:
            seal_id, seal_phone = self.vault.sealer("id_number"), self.vault.sealer("phone")
            nonces = os.urandom(24 * len(staged))
            records = []
            # Sorted by the unique key: concurrent imports then take their index locks in one order.
            for i, r in enumerate(sorted(staged.values(), key=_by_hash)):
                mid, m = r.member_id.bytes, r.member
                number, phone = m.number, m.phone
                records.append(
                    (
                        r.member_id,
                        m.branch_id,
                        m.name,
                        r.id_hash,
                        seal_id(nonces[24 * i : 24 * i + 12], mid, number),
                        mask_id_number(number),
                        seal_phone(nonces[24 * i + 12 : 24 * i + 24], mid, phone) if phone else None,
                        mask_phone(phone) if phone else None,
                        m.birth_date.year,
                        m.sex,
                        home_prefecture(m.region_code),
                        m.employment_form,
                        m.occupation,
                        m.skill_level,
                        m.joined_on,
                        r.row,
                    )
                )
            # A deadlock with a concurrent import despite the order is retried by _write.
            inserted = await store.insert_staged_members(conn, records, self.import_id)
        # Rows whose person is already a member (before this batch, or earlier in this file).
        missing = [h for h, r in staged.items() if r.member_id not in inserted]
        existing = await store.members_by_hashes(conn, missing) if missing else {}
        for h in missing:
            r, found = staged[h], existing.get(h)
            if found is None:  # cannot happen: the conflict was on this hash
                bad.append(Rejected(r.row, "id_number", "conflicting concurrent write; upload again"))
            else:
                bad.append(self._already(r.row, found))
        for r in dupes:
            first = staged[r.id_hash]
            if first.member_id in inserted:
                bad.append(
                    Rejected(
                        r.row,
                        "id_number",
                        f"already a member (same ID number as row {first.row} of this file)",
                        "already_member",
                        first.member_id,
                    )
                )
            else:
                bad.append(self._already(r.row, existing[r.id_hash]))
        # Their events, with the data that was stored, through the shared encoder.
        if inserted:
            time_iso = json_time(datetime.now(UTC))
            event_ids = uuid7_batch(len(inserted))  # time-ordered: the outbox's event_id index appends
            rows_out = []
            topic, event_type = MemberJoined.topic, MemberJoined.event_type
            lane_of = outbox.lane_of
            import_id = str(self.import_id)  # notices of an import go out as one digest
            traceparents = iter(new_traceparents(self.trace_id, len(inserted)))  # this request's trace, a span each
            # A batch's few branches as the event writes them: their id as text once each, not once a row.
            about = {
                bid: (str(b["id"]), b["region_code"]) for bid, b in open_to.items() if not isinstance(b, DomainError)
            }
            for r, event_id in zip((r for r in staged.values() if r.member_id in inserted), event_ids, strict=True):
                m = r.member
                branch_text, region_code = about[m.branch_id]
                member_id = str(r.member_id)
                data = domain.member_joined_data(
                    member_id,
                    branch_text,
                    region_code,
                    m.employment_form,
                    m.occupation,
                    m.skill_level,
                    m.birth_date.year,
                    m.sex,
                    m.joined_on.isoformat(),
                    import_id,
                    r.id_hash.hex(),  # what training matches a provider's attendance report by
                )
                value = encode_value(
                    MemberJoined,
                    data,
                    subject=member_id,
                    event_id=str(event_id),
                    time=time_iso,
                    traceparent=next(traceparents),
                )
                rows_out.append((event_id, topic, member_id, lane_of(member_id), event_type, value))
            await outbox.add_encoded(conn, rows_out)
        n_already = sum(1 for b in bad if b.outcome == "already_member")
        n_rejected = len(bad) - n_already
        await store.record_import_batch(
            conn,
            self.import_id,
            [(b.row, b.outcome, b.member_id, b.field, b.reason) for b in bad],
            last_row=last_row,
            accepted=len(inserted),
            rejected=n_rejected,
            already=n_already,
            bytes_read=self.counts.bytes,
        )
        # Counted once the transaction commits (the caller's ``async with`` has not returned yet,
        # so a retry after a deadlock does not count twice: counts are taken from the database at the end).
        self.counts.accepted += len(inserted)
        self.counts.rejected += n_rejected
        self.counts.already += n_already

    def _already(self, row: int, m) -> Rejected:
        """A person already a member: the member's id only when it is in the caller's scope."""
        if domain.is_elsewhere(m, self.principal):  # say nothing that identifies it
            return Rejected(row, "id_number", "already a member elsewhere", "already_member")
        return Rejected(row, "id_number", _already_reason(m, self.import_id), "already_member", m["id"])


def _by_hash(r: Row) -> bytes:
    return r.id_hash


def _already_reason(m, import_id: uuid.UUID) -> str:
    if m["import_id"] == import_id:
        return f"already a member (same ID number as row {m['import_row']} of this file)"
    if m["status"] != "active":
        return f"already a member (status {m['status']}: rejoin through POST /v1/members)"
    return "already a member"


__all__ = ["CsvRecords", "ImportFailed", "Importer", "Rejected", "Row", "TextDecoder", "refusal"]
