"""Fixtures of the notifier's tests: fake receivers, a real SMTP server, a notifier under test."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from notifier_fakes import Mailbox, Receivers  # noqa: E402
from notifier_harness import Notifier, fast_settings  # noqa: E402


@pytest.fixture(scope="session")
def receivers():
    fakes = Receivers().start()
    yield fakes
    fakes.stop()


@pytest.fixture(scope="session")
def mailbox(tmp_path_factory):
    box = Mailbox(tmp_path_factory.mktemp("smtp-tls")).start()  # STARTTLS + AUTH, as a real relay
    yield box
    box.stop()


@pytest.fixture(scope="module")
async def notifier(stack, make_database, receivers, mailbox):
    dsn = await make_database("notifier")
    n = await Notifier(stack, dsn, {**fast_settings(receivers.base, mailbox.port), **mailbox.env()}).start()
    yield n
    await n.stop()
