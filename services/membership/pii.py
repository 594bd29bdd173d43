"""Personal data of members: validation, encryption at rest, keyed lookup hashes, masking.

* Resident ID numbers: GB 11643 check character and birth date (``shared.identifiers``),
  plus a plausible GB/T 2260 region prefix (see :func:`region_prefix_problem`).
* Phones: mainland mobile numbers, normalised to 11 digits.
* At rest: AES-256-GCM, stored as ``version byte || 12-byte random nonce || ciphertext+tag``;
  the associated data binds a ciphertext to its field and member, so a value cannot be
  copied to another row or column and still decrypt.
* Lookup: HMAC-SHA256 of the normalised number (``shared.identifiers.keyed_hash``), unique in
  the database, so equality is tested without the clear value.

The encryption and lookup keys are derived from ``Settings.data_key_bytes()`` with HKDF
(one key per purpose), so one secret in the settings never serves two algorithms.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from datetime import date

from asyncpg.pgproto.pgproto import UUID as PgUUID
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import regions
from shared.identifiers import (
    InvalidIdentifier,
    KeyedHash,
    ResidentId,
    mask_phone,
    normalise_phone,
    parse_resident_id,
)

BLOB_VERSION = b"\x01"

# GB/T 2260 province-level codes (the first two digits of every ID number), plus 83 used by
# residence permits of Taiwan residents (HK 81 and Macao 82 are in the list).
PROVINCES = frozenset(
    {
        "11",
        "12",
        "13",
        "14",
        "15",
        "21",
        "22",
        "23",
        "31",
        "32",
        "33",
        "34",
        "35",
        "36",
        "37",
        "41",
        "42",
        "43",
        "44",
        "45",
        "46",
        "50",
        "51",
        "52",
        "53",
        "54",
        "61",
        "62",
        "63",
        "64",
        "65",
        "71",
        "81",
        "82",
        "83",
    }
)
# Ningxia's prefecture-level parts: the 5 cities of today, and the former prefectures whose
# codes people registered there still carry (ID numbers are never renumbered): 6421 银南地区
# (until 1998, now 吴忠市) and 6422 固原地区 (until 2001, now 固原市).
NINGXIA_PREFECTURES = frozenset({"01", "02", "03", "04", "05", "21", "22"})


@functools.lru_cache(maxsize=4096)  # an import's rows come from a few hundred prefixes
def region_prefix_problem(prefix: str) -> str | None:
    """Why the 6-digit region prefix of an ID number is not a plausible GB/T 2260 code, or None.

    A member may come from any province, so the prefix is not required to be in Ningxia;
    it must be a real province code with a plausible prefecture part. Inside Ningxia (64)
    the prefecture part must be one of its cities or former prefectures.
    """
    province, prefecture = prefix[:2], prefix[2:4]
    if province not in PROVINCES:
        return "region prefix is not a GB/T 2260 province code"
    if province == "64":
        if prefecture not in NINGXIA_PREFECTURES:
            return "region prefix is not a Ningxia city or former prefecture (GB/T 2260)"
    elif province not in ("81", "82", "83", "71") and not ("01" <= prefecture <= "70" or prefecture == "90"):
        return "region prefix has no such prefecture part (GB/T 2260)"
    return None


def parse_id_number(value: str, today: date | None = None) -> ResidentId:
    """GB 11643 check character, real and plausible birth date, plausible region prefix."""
    parsed = parse_resident_id(value, today)
    problem = region_prefix_problem(parsed.region_code)
    if problem:
        raise InvalidIdentifier(problem)
    return parsed


def age_on(born: date, day: date) -> int:
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def home_prefecture(region_code: str) -> str:
    """The prefecture-level GB/T 2260 code of an ID number's region prefix (``640104`` → ``640100``).

    What is kept in clear of where a member was registered: with the county too, the last four
    characters and the birth year would leave only the birth day unknown (~33 candidates once the
    check character is applied); without it several hundred remain, which only the keys can tell apart."""
    return region_code[:4] + "00"


def home_region_name(code: str) -> str | None:
    region = regions.get(code)
    return region.name if region else None


def _derive(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"changai/membership", info=purpose).derive(key)


class Vault:
    """Encrypts, decrypts and hashes members' personal data with keys derived from the data key."""

    def __init__(self, data_key: bytes):
        self._aes = AESGCM(_derive(data_key, b"aes-256-gcm v1"))
        self._mac_key = _derive(data_key, b"lookup hmac-sha256 v1")
        # lookup_hash(number) = keyed_hash(mac key, number), the key set up once (an import hashes every row)
        self.lookup_hash = KeyedHash(self._mac_key)

    def encrypt(self, field: str, member_id: uuid.UUID, value: str) -> bytes:
        nonce = os.urandom(12)
        return BLOB_VERSION + nonce + self._aes.encrypt(nonce, value.encode(), _aad(field, member_id))

    def sealer(self, field: str):
        """``seal(nonce, member_id_bytes, value)``: :meth:`encrypt` for bulk work, the nonces drawn by the caller
        (12 random bytes each, from one ``os.urandom`` call per batch)."""
        encrypt = self._aes.encrypt
        prefix = b"changai/member/" + field.encode() + b"/"

        def seal(nonce: bytes, member_id_bytes: bytes, value: str) -> bytes:
            return BLOB_VERSION + nonce + encrypt(nonce, value.encode(), prefix + member_id_bytes)

        return seal

    def decrypt(self, field: str, member_id: uuid.UUID, blob: bytes) -> str:
        if blob[:1] != BLOB_VERSION:
            raise ValueError("unknown ciphertext version")
        return self._aes.decrypt(blob[1:13], blob[13:], _aad(field, member_id)).decode()


def _aad(field: str, member_id: uuid.UUID) -> bytes:
    return b"changai/member/" + field.encode() + b"/" + member_id.bytes


_VERSION_7 = bytes(b & 0x0F | 0x70 for b in range(256))  # translate tables: the version and variant bits
_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))


def uuid7_batch(n: int, ms: int | None = None) -> list[PgUUID]:
    """n time-ordered UUIDs (RFC 9562 version 7: ids sort by creation time, to the millisecond) of this
    millisecond, as asyncpg's UUID type (a ``uuid.UUID``); built 16 bytes at a time for the whole batch,
    so a bulk import pays one slice and one constructor an id."""
    if n == 0:
        return []
    raw = bytearray(os.urandom(16 * n))
    ms = time.time_ns() // 1_000_000 if ms is None else ms
    prefix = (ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
    for j in range(6):
        raw[j::16] = prefix[j : j + 1] * n
    raw[6::16] = bytes(raw[6::16]).translate(_VERSION_7)
    raw[8::16] = bytes(raw[8::16]).translate(_VARIANT)
    data = bytes(raw)
    return [PgUUID(data[i : i + 16]) for i in range(0, 16 * n, 16)]


def uuid7(ms: int | None = None) -> uuid.UUID:
    """One time-ordered UUID (version 7)."""
    return uuid.UUID(bytes=uuid7_batch(1, ms)[0].bytes)


__all__ = [
    "InvalidIdentifier",
    "ResidentId",
    "Vault",
    "age_on",
    "home_prefecture",
    "mask_phone",
    "normalise_phone",
    "parse_id_number",
    "region_prefix_problem",
    "uuid7",
    "uuid7_batch",
]
