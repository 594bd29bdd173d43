"""Outbound webhook calls follow no redirects (docs/notifier.md, "Outbound calls locked down").

A receiver over real HTTPS (a locally made CA, as in test_notifier_outbound_real.py) answers each
redirect status with a ``Location`` on the same server; the worker's own client
(``outbound.http_client``) and sender (``outbound.send_webhook``) make the call. A redirect would
let a public receiver send the signed notice on to an address the SSRF guard never checked, so the
target must never be called, and the answer is what the docs make of any refusal that is not a
2xx or a 410: a failure retried on the schedule, the channel not paused.
"""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from notifier_fakes import make_tls, server_context

from services.notifier import outbound, vault

pytestmark = pytest.mark.integration

REDIRECTS = (301, 302, 303, 307, 308)


class Redirector:
    """HTTPS on 127.0.0.1: ``POST /hooks/<status>`` answers ``<status>`` with ``Location: /target``;
    ``/target`` answers 204 (what a receiver that took the notice would say). Every call recorded."""

    def __init__(self, cert, key):
        self.calls: list[tuple[str, str]] = []  # (method, path)
        self.lock = threading.Lock()
        redirector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with redirector.lock:
                    redirector.calls.append((self.command, self.path))
                if self.path.startswith("/hooks/"):
                    self.send_response(int(self.path.rsplit("/", 1)[1]))
                    self.send_header("Location", f"https://localhost:{redirector.port}/target")
                else:
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = server_context(cert, key).wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def called(self, path: str) -> list[tuple[str, str]]:
        with self.lock:
            return [c for c in self.calls if c[1] == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def redirector(tmp_path_factory):
    ca, cert, key = make_tls(tmp_path_factory.mktemp("tls-redirect"))
    server = Redirector(cert, key)
    yield ca, server
    server.stop()


async def test_a_redirect_is_not_followed_and_is_a_failure_retried_on_the_schedule(redirector):
    ca, server = redirector
    secret = vault.new_webhook_secret()
    async with outbound.http_client(ca_bundle=str(ca)) as http:
        for status in REDIRECTS:
            outcome = await outbound.send_webhook(
                http,
                f"https://localhost:{server.port}/hooks/{status}",
                [{"secret": secret, "expires_at": None}],
                str(uuid.uuid4()),
                b'{"type":"t"}',
                timeout=5,
                allow_private=True,
            )
            assert server.called(f"/hooks/{status}") == [("POST", f"/hooks/{status}")]
            assert not outcome.delivered, f"{status} counted as delivered"
            assert (outcome.result, outcome.status_code, outcome.pause) == ("retry", status, False), outcome
    # The receiver answered every call (so the redirects were really made); nothing went to the target.
    assert len(server.calls) == len(REDIRECTS)
    assert server.called("/target") == []
