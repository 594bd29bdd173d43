"""The one free-text scrubber (shared.privacy.scrub_text), also the logs' last line of defence."""
import io
import json
import logging

import pytest

from shared.logging import JsonFormatter, RepeatFilter
from shared.privacy import scrub_text

ID = "640104199001018143"


@pytest.mark.parametrize("text", [
    f"身份证 {ID}",
    "id 64010419900101814X, thanks",
    "id 64010419900101814x",
    "640104 19900101 8143",
    "640104-1990-0101-8143",
    "６４０１０４１９９００１０１８１４３",            # full-width digits
    "６４０１０４１９９００１０１８１４Ｘ",            # full-width digits and X
    "旧证 640104900101814",                        # first-generation, 15 digits
])
def test_id_numbers_are_masked_however_written(text):
    out = scrub_text(text)
    assert "[id-number]" in out, out
    assert sum(c.isdigit() for c in out) < 6, out


@pytest.mark.parametrize("text", [
    "call 13812345678",
    "tel13812345678.",
    "138 1234 5678",
    "138-1234-5678",
    "1 3 8 1 2 3 4 5 6 7 8",
    "+86 138 1234 5678",
    "+8613812345678",
    "+86-138-1234-5678",
    "(+86) 13812345678",
    "008613812345678",
    "8613812345678",
    "１３８１２３４５６７８",
    "＋８６　１３８－１２３４－５６７８",               # full-width plus, ideographic space, full-width dash
    "电话：１３８ １２３４ ５６７８。",
    "phone \u0661\u0663\u0668\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668",  # Arabic-Indic digits
    "138\u20141234\u20145678",                       # em dashes
])
def test_phone_numbers_are_masked_however_written(text):
    out = scrub_text(text)
    assert "[phone]" in out or "[id-number]" in out, out
    assert sum(c.isdigit() for c in out) < 4, out


def test_what_is_around_stays_as_it_was():
    text = f"暂停原因：联系张三 138-1234-5678 或 身份证{ID}，金额 800.00 元，2024-06-01 第 3 次"
    assert scrub_text(text) == "暂停原因：联系张三 [phone] 或 身份证[id-number]，金额 800.00 元，2024-06-01 第 3 次"


@pytest.mark.parametrize("text", ["", "no numbers", "order 12345678901234567890", "800.00", "2024-06-01",
                                  "uuid 0190f2a4-7b7e-7c3d-9a1e-3f2b1c0d4e5f", "１２３", "12345678901"])
def test_harmless_text_is_unchanged(text):
    assert scrub_text(text) == text


def test_log_lines_use_it():
    record = logging.makeLogRecord({"name": "x", "levelno": 30, "levelname": "WARNING",
                                    "msg": "paused by ＋８６ １３８１２３４５６７８", "note": "640104 19900101 8143"})
    line = json.loads(JsonFormatter("unit").format(record))
    assert line["message"] == "paused by [phone]" and line["note"] == "[id-number]"


# -- repeated connection errors ------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def noisy_logger(clock):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("unit"))
    handler.addFilter(RepeatFilter(window_s=10, clock=clock))
    loggers = []
    for name in ("aiokafka.conn", "aiokafka.producer.sender", "shared.outbox", "services.membership.api"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        loggers.append(logger)
    return out, loggers


def lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_kafka_outage_logs_a_line_per_window_with_the_count_of_the_rest():
    clock = Clock()
    out, (conn, sender, outbox, api) = noisy_logger(clock)
    try:
        for i in range(1000):  # ~100 a second for 10 s, as aiokafka does while the broker is down
            clock.now = i / 100
            conn.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
            outbox.warning("outbox publish failed; will retry", extra={"error": "KafkaConnectionError()"})
        sender.warning("Got error produce response: %s", "NotLeaderForPartitionError")
        api.warning("the same line from a service is never held back")
        api.warning("the same line from a service is never held back")
        assert len(lines(out)) == 2 + 1 + 2
        clock.now = 10.0
        conn.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
        last = lines(out)[-1]
        assert last["suppressed"] == 999 and last["logger"] == "aiokafka.conn"
        conn.info("info lines are not counted")
        assert len(lines(out)) == 2 + 1 + 2 + 1 + 1
    finally:
        for logger in (conn, sender, outbox, api):
            logger.handlers[:] = []
            logger.propagate = True


def test_what_sets_up_logging_itself_gets_the_same_handler(capsys):
    """A Faust worker clears the root handlers and installs its own plain-text one unless it is given
    ``dict_config``: with it, its lines are JSON, scrubbed, and repeats are held back."""
    import logging.config

    from shared.logging import dict_config

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(dict_config("unit-worker", "INFO", repeat_window_s=3600))
        for _ in range(50):
            logging.getLogger("aiokafka.conn").error("Unable connect to node with id %s", 1)
        logging.getLogger("faust.worker").info("member 13812345678 joined")
        out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert [(o["logger"], o["message"]) for o in out] == [
        ("aiokafka.conn", "Unable connect to node with id 1"), ("faust.worker", "member [phone] joined")]
    assert {o["service"] for o in out} == {"unit-worker"}
