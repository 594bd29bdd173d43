"""JSON structured logs, one object per line, carrying the trace id.

Personal data must never reach a log: as a last line of defence every message
and field is scrubbed of anything shaped like a resident ID number or a mobile
phone number before it is written.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from datetime import UTC, datetime

import orjson

from shared.privacy import scrub_text

trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)

# The one free-text scrubber (ID numbers, phones), shared with the services' event payloads.
scrub = scrub_text


class RepeatFilter(logging.Filter):
    """Lets one line per ``window_s`` through for each repeated message of the noisy loggers
    (aiokafka and the outbox relay log a connection error per retry: ~100 lines a second per
    service while Kafka is down). The next line let through carries ``suppressed``: how many
    were dropped since. Keyed by logger, level and message template, so distinct errors
    still show."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("aiokafka", "kafka", "faust", "mode", "asyncpg", "shared.outbox"),
        window_s: float = 10.0,
        clock=time.monotonic,
        max_keys: int = 1000,
    ):
        super().__init__()
        self.prefixes = prefixes
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[tuple, list] = {}  # key -> [last time let through, suppressed since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.suppressed = seen[1]
        if len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        trace_id = trace_id_var.get()
        if trace_id:
            entry["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["error"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


NOISY = ("aiokafka", "kafka", "asyncio", "uvicorn.access")


def json_handler(service: str, repeat_window_s: float = 10.0) -> logging.Handler:
    """The one log handler: JSON lines on stdout, scrubbed, repeats of the noisy loggers held back."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RepeatFilter(window_s=repeat_window_s))
    return handler


def configure(service: str, level: str = "INFO", repeat_window_s: float = 10.0) -> None:
    root = logging.getLogger()
    root.handlers[:] = [json_handler(service, repeat_window_s)]
    root.setLevel(level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def dict_config(service: str, level: str = "INFO", repeat_window_s: float = 10.0) -> dict:
    """``configure`` as a ``logging.config.dictConfig`` dict, for what sets up logging itself: a Faust
    worker clears the root handlers and installs its own plain-text one unless given this."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": json_handler, "service": service, "repeat_window_s": repeat_window_s}},
        "root": {"level": level.upper(), "handlers": ["json"]},
        "loggers": {name: {"level": "WARNING"} for name in NOISY},
    }
