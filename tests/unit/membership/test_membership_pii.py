"""ID numbers, phones, encryption at rest, lookup hashes, masking, time-ordered ids."""
import uuid
from datetime import date

import pytest
from cryptography.exceptions import InvalidTag

from services.membership import pii
from shared.identifiers import InvalidIdentifier, id_check_char, keyed_hash


def make(first17: str) -> str:
    return first17 + id_check_char(first17)


def test_published_example_from_gb11643_is_accepted():
    parsed = pii.parse_id_number("11010519491231002X")  # the standard's own example (Beijing, 朝阳区)
    assert (parsed.region_code, parsed.birth_date, parsed.sex) == ("110105", date(1949, 12, 31), "female")


@pytest.mark.parametrize("first17", [
    "64010419900307123",  # 兴庆区, a county of today
    "64222119800101123",  # 固原县 of the former 固原地区 (6422): people keep the code they registered under
    "64212119751231456",  # the former 银南地区 (6421)
    "62230119880808002",  # 甘肃武威: members come from other provinces too
    "81000019900101001",  # Hong Kong residence permit
])
def test_plausible_region_prefixes(first17):
    assert pii.parse_id_number(make(first17)).number.startswith(first17)


@pytest.mark.parametrize("first17, reason", [
    ("99010119900101123", "province code"),
    ("64600119900101123", "Ningxia city or former prefecture"),
    ("11800119900101123", "prefecture part"),
])
def test_implausible_region_prefixes(first17, reason):
    with pytest.raises(InvalidIdentifier, match=reason):
        pii.parse_id_number(make(first17))


def test_corrupted_numbers_are_refused():
    good = make("64010419900307123")
    for i in range(17):  # any single-digit change breaks the check character
        bad = good[:i] + str((int(good[i]) + 1) % 10) + good[i + 1:]
        with pytest.raises(InvalidIdentifier):
            pii.parse_id_number(bad)
    with pytest.raises(InvalidIdentifier, match="check digit"):
        pii.parse_id_number(good[:16] + good[17] + good[16])  # two neighbours swapped
    with pytest.raises(InvalidIdentifier, match="real date"):
        pii.parse_id_number(make("64010419900230123"))


@pytest.mark.parametrize("raw", ["13912345678", "139 1234 5678", "139-1234-5678", "+86 139 1234 5678",
                                 "8613912345678", "0086-13912345678"])
def test_phone_normalised(raw):
    assert pii.normalise_phone(raw) == "13912345678"
    assert pii.mask_phone(pii.normalise_phone(raw)) == "139****5678"


@pytest.mark.parametrize("raw", ["12912345678", "1391234567", "139123456789", "0951-1234567", "1391234567X"])
def test_phone_refused(raw):
    with pytest.raises(InvalidIdentifier):
        pii.normalise_phone(raw)


def test_encryption_round_trip_is_bound_to_field_and_member():
    vault = pii.Vault(b"k" * 32)
    member = uuid.uuid4()
    number = make("64010419900307123")
    blob = vault.encrypt("id_number", member, number)
    assert number.encode() not in blob and blob[:1] == pii.BLOB_VERSION and len(blob) == 1 + 12 + 18 + 16
    assert vault.decrypt("id_number", member, blob) == number
    assert vault.encrypt("id_number", member, number) != blob, "a fresh random nonce every time"
    with pytest.raises(InvalidTag):
        vault.decrypt("id_number", uuid.uuid4(), blob)  # copied to another member's row
    with pytest.raises(InvalidTag):
        vault.decrypt("phone", member, blob)  # copied to another column
    with pytest.raises(InvalidTag):
        pii.Vault(b"x" * 32).decrypt("id_number", member, blob)  # another key
    seal = vault.sealer("id_number")
    assert vault.decrypt("id_number", member, seal(b"n" * 12, member.bytes, number)) == number


def test_lookup_hash_is_the_keyed_hash_under_a_derived_key():
    vault = pii.Vault(b"k" * 32)
    number = make("64010419900307123")
    assert vault.lookup_hash(number) == keyed_hash(vault._mac_key, number)
    assert vault.lookup_hash(number) != pii.Vault(b"x" * 32).lookup_hash(number)
    assert vault.lookup_hash(number) != keyed_hash(b"k" * 32, number), "lookup key is derived, not the raw key"


def test_uuid7_is_time_ordered_version_7():
    ids = [pii.uuid7(ms) for ms in (1_000, 1_001, 2_000_000_000_000)]
    assert ids == sorted(ids)
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)


def test_uuid7_batch_is_one_millisecond_of_distinct_ordered_ids():
    ids = pii.uuid7_batch(1000, ms=1_700_000_000_000)
    assert len(set(ids)) == 1000 and all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert {u.bytes[:6] for u in ids} == {(1_700_000_000_000).to_bytes(6, "big")}
    assert pii.uuid7_batch(1, ms=1_700_000_000_001)[0] > max(ids)
