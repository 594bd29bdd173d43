"""The roster batch writes its events through ``shared.outbox.encode_many`` (no CloudEvent model an event):
the bytes must be exactly those of ``encode(envelope(event))``, the batch id set as ``model_copy`` would."""
import uuid
from datetime import date

from shared import outbox
from shared.events import decode, encode, envelope, parse_data
from shared.events.training import EnrolmentAttended, SessionCompleted, SessionScheduled


def test_batch_encoding_equals_the_envelope_bytes():
    session, batch = uuid.uuid4(), uuid.uuid4()
    region = {"region_code": "640104", "city_code": "640100", "subsidy_category": "pre_job"}
    items = [
        EnrolmentAttended(enrolment_id=uuid.uuid4(), session_id=session, member_id=uuid.uuid4(), **region),
        SessionCompleted(session_id=session, programme_id=uuid.uuid4(), programme_name="枸杞加工岗前培训", number=2,
                         organiser_id=str(uuid.uuid4()), organiser_kind="branch", organiser_name="工会",
                         person_times=2, passed=1, failed=1, eligible_member_ids=[uuid.uuid4()], eligible_persons=1,
                         completed_on=date(2021, 4, 20), **region),
        SessionScheduled(session_id=session, programme_id=uuid.uuid4(), number=2, organiser_id="x",
                         organiser_kind="branch", starts_on=date(2021, 4, 1), ends_on=date(2021, 4, 20),
                         capacity=3, **region),  # no batch_id field: left as it is
    ]
    trace = "ab" * 16
    rows = outbox.encode_many(items, trace_id=trace, update={"batch_id": str(batch)})
    assert len({r[0] for r in rows}) == len(items)
    for item, (event_id, topic, key, lane, event_type, value) in zip(items, rows, strict=True):
        sent = decode(value)
        marked = item.model_copy(update={"batch_id": batch}) if "batch_id" in type(item).model_fields else item
        expected = envelope(marked, trace_id=trace, time=sent.time, event_id=str(event_id))
        expected = expected.model_copy(update={"traceparent": sent.traceparent})
        assert value == encode(expected)[1]
        assert (topic, key, lane, event_type) == (item.topic, item.subject(), outbox.lane_of(key), item.event_type)
        assert sent.traceparent.split("-")[1] == trace and uuid.UUID(sent.id).version == 4
        assert parse_data(sent) == marked
