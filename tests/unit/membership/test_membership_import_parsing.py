"""The bulk import's streaming decoder, CSV splitter, row rules and fast event encoding."""
import random
import uuid
from datetime import UTC, date, datetime

import pytest

from services.membership import importer
from services.membership.domain import MemberRules, NewMember, member_joined_data
from services.membership.importer import CsvRecords, ImportFailed, Rejected, TextDecoder
from shared.errors import Invalid
from shared.events import decode, encode, encode_value, envelope, json_time, parse_data
from shared.events.membership import MemberJoined
from shared.identifiers import id_check_char

TEXT = "name,id_number,phone\n张三,640104199003071236,13912345678\n李四,\"640104199003071236\",\n"


def chunks(data: bytes, sizes):
    i = 0
    for size in sizes:
        yield data[i:i + size]
        i += size
    yield data[i:]


def decode_all(data: bytes, sizes, charset=None):
    d = TextDecoder(charset)
    out = "".join(d.feed(c) for c in chunks(data, sizes)) + d.feed(b"", final=True)
    return out, d.encoding


@pytest.mark.parametrize("encoded, encoding", [
    (TEXT.encode("utf-8"), "utf-8"),
    (b"\xef\xbb\xbf" + TEXT.encode("utf-8"), "utf-8"),
    (TEXT.encode("gb18030"), "gb18030"),
])
def test_decoder_detects_encoding_at_every_split(encoded, encoding):
    for cut in range(1, len(encoded)):
        text, found = decode_all(encoded, [cut])
        assert (text, found) == (TEXT, encoding), cut


def test_decoder_ascii_first_then_chinese_much_later():
    data = ("name,id_number\n" + "a,1\n" * 5000 + "王五,2\n").encode("gb18030")
    text, enc = decode_all(data, [4096] * 20)
    assert enc == "gb18030" and text.endswith("王五,2\n")


def test_decoder_declared_charset_and_refusals():
    assert decode_all(TEXT.encode("gb18030"), [7], charset="GBK") == (TEXT, "gb18030")
    with pytest.raises(ImportFailed, match="UTF-16"):
        decode_all(TEXT.encode("utf-16"), [100])
    with pytest.raises(ImportFailed, match="not supported"):
        TextDecoder("latin-1")
    with pytest.raises(ImportFailed, match="not valid utf-8"):
        decode_all(TEXT.encode("gb18030"), [100], charset="utf-8")


def test_csv_records_across_chunks_with_quoted_newlines_and_crlf():
    text = 'a,b\r\n"multi\nline, with comma",2\r\n"x ""quoted""",3\nlast,4'
    for cut in range(1, len(text)):
        parser = CsvRecords()
        records = parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.feed("", final=True)
        assert records == [["a", "b"], ["multi\nline, with comma", "2"], ['x "quoted"', "3"], ["last", "4"]], cut


def test_csv_unclosed_quote_is_bounded():
    parser = CsvRecords()
    parser.feed('a,b\n"opened,1\n')
    with pytest.raises(ImportFailed, match="never closed"):
        for _ in range(2000):
            parser.feed("x" * 1000 + "\n")


def make_id(first17: str) -> str:
    return first17 + id_check_char(first17)


def test_check_digit_tables_equal_the_standard_loop():
    rng = random.Random(1)
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    for _ in range(5000):
        first17 = "".join(rng.choice("0123456789") for _ in range(17))
        expected = "10X98765432"[sum(int(c) * w for c, w in zip(first17, weights, strict=True)) % 11]
        assert id_check_char(first17) == expected


BRANCH = uuid.uuid4()


def validate(**fields):
    """A row through the domain's rules (the join's), as the importer calls them."""
    rules = MemberRules(date(2021, 9, 1), BRANCH)
    values = {"name": "张三", "id_number": make_id("64010419900307123"), "phone": None, "employment_form": None,
              "occupation": None, "skill_level": None, "branch_id": None, "joined_on": None, **fields}
    return rules(*(values[f] for f in importer.FIELDS))


def test_row_rules_accept_and_normalise():
    row = validate(phone="+86 139-1234-5678", employment_form="外卖骑手", skill_level="高级技师", joined_on="2021/3/1")
    assert isinstance(row, NewMember)
    assert (row.phone, row.employment_form, row.skill_level, row.joined_on) == (
        "13912345678", "food_delivery", 1, date(2021, 3, 1))
    assert (row.birth_date, row.sex, row.branch_id) == (date(1990, 3, 7), "male", BRANCH)


@pytest.mark.parametrize("fields, field, reason", [
    ({"name": " "}, "name", "required"),
    ({"id_number": ""}, "id_number", "required"),
    ({"id_number": "64010419900307123"}, "id_number", "17 digits"),
    ({"id_number": "640104199003071230"}, "id_number", "check digit"),
    ({"id_number": make_id("64010420100307123")}, "id_number", "at least 16"),
    ({"id_number": make_id("99010419900307123")}, "id_number", "province"),
    ({"phone": "12345"}, "phone", "mobile"),
    ({"employment_form": "astronaut"}, "employment_form", "one of"),
    ({"skill_level": "6"}, "skill_level", "1 (高级技师) to 5"),
    ({"branch_id": "not-a-uuid"}, "branch_id", "UUID"),
    ({"joined_on": "yesterday"}, "joined_on", "date"),
    ({"joined_on": "2030-01-01"}, "joined_on", "future"),
])
def test_row_rules_refuse_with_field_and_reason_never_the_value(fields, field, reason):
    with pytest.raises(Invalid) as refused:
        validate(**fields)
    result = importer.refusal(7, refused.value)
    assert isinstance(result, Rejected) and result.row == 7
    assert result.field == field and reason in result.reason
    for value in fields.values():
        if value and len(value) > 4:
            assert value not in result.reason


def test_remembered_cells_give_what_a_fresh_check_gives_and_a_refusal_is_refused_on_every_row():
    """The rules remember accepted employment forms, skill levels, branches and dates per distinct cell (the
    import's speed): the answer must be the one a fresh set of rules gives, every refusal every time."""
    rules = MemberRules(date(2021, 9, 1), BRANCH)
    other = str(uuid.uuid4())
    cells = [
        {"employment_form": "外卖骑手", "skill_level": "高级技师", "branch_id": other, "joined_on": "2021/3/1"},
        {"employment_form": " courier ", "skill_level": "", "branch_id": None, "joined_on": None},
        {"employment_form": None, "skill_level": "3", "branch_id": f" {other} ", "joined_on": "20210301"},
    ]
    bad = [
        ({"employment_form": "astronaut"}, "employment_form"),
        ({"skill_level": "6"}, "skill_level"),
        ({"branch_id": "not-a-uuid"}, "branch_id"),
        ({"joined_on": "2030-01-01"}, "joined_on"),
    ]
    for _ in range(3):  # the second and third rounds are answered from what the first remembered
        for fields in cells:
            values = {"name": "张三", "id_number": make_id("64010419900307123"), "phone": None, "occupation": None,
                      **fields}
            fresh = MemberRules(date(2021, 9, 1), BRANCH)(*(values[f] for f in importer.FIELDS))
            assert rules(*(values[f] for f in importer.FIELDS)) == fresh
        for fields, field in bad:
            values = {"name": "张三", "id_number": make_id("64010419900307123"), "phone": None, "occupation": None,
                      "employment_form": None, "skill_level": None, "branch_id": None, "joined_on": None, **fields}
            with pytest.raises(Invalid) as refused:
                rules(*(values[f] for f in importer.FIELDS))
            assert refused.value.field == field
    # the typed values of a join over HTTP are the same keys' answers, not confused with the text ones
    typed = rules("张三", make_id("64010419900307123"), None, "food_delivery", None, 1, uuid.UUID(other),
                  date(2021, 3, 1))
    assert (typed.employment_form, typed.skill_level, typed.branch_id, typed.joined_on) == (
        "food_delivery", 1, uuid.UUID(other), date(2021, 3, 1))
    with pytest.raises(Invalid):
        rules("张三", make_id("64010419900307123"), None, None, None, 6, None, None)


def test_shared_encoder_bytes_equal_the_models():
    member, branch, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    moment = datetime(2021, 9, 1, 8, 30, 15, 123456, tzinfo=UTC)
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    for occupation, skill, import_id in (("快递员", 3, uuid.uuid4()), (None, None, None)):
        data = MemberJoined(member_id=member, branch_id=branch, region_code="640104", city_code="640100",
                            employment_form="courier", occupation=occupation, skill_level=skill, birth_year=1990,
                            sex="male", joined_on=date(2021, 3, 1), import_id=import_id)
        event = envelope(data, time=moment, event_id=str(event_id))
        event = event.model_copy(update={"traceparent": traceparent})
        _, expected, _ = encode(event)
        fields = member_joined_data(str(member), str(branch), "640104", "courier", occupation, skill, 1990, "male",
                                    "2021-03-01", str(import_id) if import_id else None)
        fast = encode_value(MemberJoined, fields, subject=str(member), event_id=str(event_id), time=json_time(moment),
                            traceparent=traceparent)
        assert fast == expected
        assert parse_data(decode(fast)) == data
