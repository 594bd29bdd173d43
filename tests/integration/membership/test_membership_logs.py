"""No ID number and no phone number reaches a log line, whatever the request does."""
import io
import logging

import pytest

from shared.logging import JsonFormatter
from tests.integration.membership.membership_support import auth, phone, running, unique_id_number

pytestmark = pytest.mark.integration


async def test_no_id_number_or_phone_in_any_log_line(stack, make_database, caplog, capsys):
    numbers = [unique_id_number("640104") for _ in range(4)]
    phones = [phone() for _ in range(4)]
    formatted = io.StringIO()
    handler = logging.StreamHandler(formatted)
    handler.setFormatter(JsonFormatter("membership"))
    root = logging.getLogger()
    old_level = root.level
    try:
        async with running(stack, make_database, log_level="DEBUG") as m:
            # create_app configured the root logger (its JSON handler only): watch from here on
            root.addHandler(handler)
            root.addHandler(caplog.handler)
            root.setLevel(logging.DEBUG)
            b = await m.branch("640104")
            joined = await m.join(b["id"], numbers[0], phone=phones[0])
            assert joined.status_code == 201
            assert (await m.join(b["id"], numbers[0], phone=phones[1])).status_code == 409
            bad = numbers[1][:-1] + ("0" if numbers[1][-1] != "0" else "1")
            assert (await m.join(b["id"], bad, phone=phones[1])).status_code == 422
            assert (await m.join(b["id"], numbers[1], phone="1" + phones[1])).status_code == 422
            member_id = joined.json()["id"]
            c = m.client
            assert (await c.post("/v1/members:lookup", json={"id_number": numbers[0]}, headers=auth())).status_code == 200
            r = await c.post(f"/v1/members/{member_id}:reveal", json={"reason": "核对身份信息"},
                             headers=auth(["membership:reveal"]))
            assert r.json()["id_number"] == numbers[0]
            csv = (f"name,id_number,phone,branch_id\n王,{numbers[2]},{phones[2]},{b['id']}\n"
                   f"李,{numbers[3][:-1]}Y,{phones[3]},{b['id']}\n周,{numbers[0]},{phones[3]},{b['id']}\n").encode()
            r = await c.post("/v1/members:import", content=csv, headers={**auth(), "Content-Type": "text/csv"})
            assert r.json()["rows"] == {"total": 3, "accepted": 1, "rejected": 1, "already_members": 1}
            await m.app.state.relay.drain(timeout=20)
    finally:
        root.removeHandler(handler)
        root.removeHandler(caplog.handler)
        root.setLevel(old_level)
    secrets = numbers + phones + [numbers[3][:-1] + "Y"]
    raw = []
    for record in caplog.records:
        raw.append(record.getMessage())
        raw.extend(str(v) for k, v in vars(record).items() if k not in ("msg", "args"))
    assert any("member import finished" in line for line in raw), "the test saw the service's own logs"
    assert any("member data revealed" in line for line in raw)
    assert any("/v1/members:lookup" in line for line in raw)
    out = capsys.readouterr()
    for text, where in (("\n".join(raw), "log records"), (formatted.getvalue(), "JSON log lines"),
                        (out.out + out.err, "stdout/stderr")):
        leaked = sum(s in text for s in secrets)  # a count: the failure message must not print them either
        assert leaked == 0, f"{leaked} ID/phone number(s) in the {where}"
