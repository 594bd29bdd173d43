from datetime import date

import pytest

from shared import identifiers as ids
from shared.money import fen_to_yuan, yuan_to_fen


def make_id(first17: str) -> str:
    return first17 + ids.id_check_char(first17)


# Published example from GB 11643-1999 annex: 11010519491231002X.
def test_resident_id_standard_example():
    parsed = ids.parse_resident_id("11010519491231002X")
    assert parsed.birth_date == date(1949, 12, 31)
    assert parsed.sex == "female"
    assert parsed.region_code == "110105"


def test_resident_id_lowercase_x_and_ningxia():
    number = make_id("64010419900307123")
    parsed = ids.parse_resident_id(number.lower())
    assert parsed.region_code == "640104" and parsed.sex == "male"
    assert parsed.masked == "*" * 14 + number[-4:]


@pytest.mark.parametrize("value, reason", [
    ("11010519491231002Y", "17 digits"),
    ("110105194912310021", "check digit"),
    ("1101051949123100", "17 digits"),
    (make_id("64010419900230123"), "real date"),
    (make_id("64010430000101123"), "plausible"),
])
def test_resident_id_refusals(value, reason):
    with pytest.raises(ids.InvalidIdentifier, match=reason):
        ids.parse_resident_id(value)


def test_credit_code_published_examples():
    # Real codes as printed on business licences.
    for code in ("91350100M000100Y43", "91440300708461136T", "913300007125582210"):
        assert ids.validate_credit_code(code) == code


@pytest.mark.parametrize("code, reason", [
    ("91350100M000100Y44", "check character"),
    ("91350100M000100Y4", "18 characters"),
    ("91350100M000100I43", "not allowed"),
])
def test_credit_code_refusals(code, reason):
    with pytest.raises(ids.InvalidIdentifier, match=reason):
        ids.validate_credit_code(code)


def test_masking():
    assert ids.mask_phone("13912345678") == "139****5678"
    assert ids.mask_id_number("64010419900307123X") == "**************123X"


def test_keyed_hash_is_deterministic_and_keyed():
    assert ids.keyed_hash(b"k1", "x") == ids.keyed_hash(b"k1", "x") != ids.keyed_hash(b"k2", "x")


@pytest.mark.parametrize("key_length", [0, 1, 31, 32, 63, 64, 65, 200])  # around SHA-256's 64-byte block
def test_keyed_hash_with_the_key_set_up_once_is_the_same_hmac(key_length):
    import hmac
    import random

    rng = random.Random(key_length)
    key = bytes(rng.randrange(256) for _ in range(key_length))
    hasher = ids.KeyedHash(key)
    for value in ["", "x", "64010419900307123X", "张三" * 40, *("".join(rng.choices("0123456789X", k=18)) for _ in range(50))]:
        assert hasher(value) == ids.keyed_hash(key, value) == hmac.digest(key, value.encode(), "sha256")
    assert hasher("x") == hasher("x")  # the set-up states are copied, never consumed


@pytest.mark.parametrize("text, fen", [("800.00", 80000), ("0", 0), ("300", 30000), ("12.5", 1250), ("0.01", 1)])
def test_yuan_to_fen(text, fen):
    assert yuan_to_fen(text) == fen
    assert yuan_to_fen(fen_to_yuan(fen)) == fen


@pytest.mark.parametrize("bad", [800.0, 800, "800.001", "-1.00", "1e3", "", " 1"])
def test_yuan_refuses_floats_and_precision(bad):
    with pytest.raises(ValueError):
        yuan_to_fen(bad)
