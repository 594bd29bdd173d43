"""The demo notice receiver: a branch's own system receiving Standard Webhooks.

    python deploy/local/receiver.py [--port 8009] [--keep 500] [--record FILE]

* ``POST /hooks/<anything>`` verifies the signature with the ``standardwebhooks`` package
  and the secret in ``CHANGAI_NOTIFIER_WEBHOOK_SECRET``; answers 204 when it verifies,
  401 when it does not (the notice is recorded either way); prints one line per notice.
* ``GET /received`` returns the last ``--keep`` notices as JSON (oldest first);
  ``DELETE /received`` forgets them.
* ``POST /control`` with ``{"fail": N, "status": 503, "retry_after": 1}`` makes the next N
  hook calls fail with that status (fault tests: "a notice receiver failing").
  ``{"hold": true}`` makes the next hook call wait for its answer (recorded, ``held``: true)
  until ``{"release": true}`` or 60 s (fault tests: a sender killed after the receiver took a
  notice, before it heard the answer).
* ``--record FILE`` appends every notice to FILE as a JSON line, flushed before the answer, so
  what was received outlives a restart of the receiver (fault tests: "the receiver down").
* ``GET /livez`` answers 200.

Standard library only, plus ``standardwebhooks``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def _pick(body: object, *paths: str) -> str:
    """The first of the dotted `paths` present in the JSON body (the notice format may evolve)."""
    for path in paths:
        node = body
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node not in (None, ""):
            return str(node)
    return "-"


class Receiver:
    def __init__(self, secret: str | None, keep: int, record: str | None = None):
        self.webhook = Webhook(secret) if secret else None
        self.notices: deque[dict] = deque(maxlen=keep)
        self.lock = threading.Lock()
        self.fail_left, self.fail_status, self.retry_after = 0, 503, None
        self.record = open(record, "a", encoding="utf-8") if record else None  # noqa: SIM115 - open while serving
        self.hold_next = False
        self.released = threading.Event()

    def receive(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bool]:
        verified, reason = False, "no secret configured"
        if self.webhook:
            try:
                self.webhook.verify(raw, headers)
                verified, reason = True, ""
            except WebhookVerificationError as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - malformed header values
                reason = f"bad signature headers: {exc}"
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self.lock:
            failing = self.fail_left > 0
            if failing:
                self.fail_left -= 1
            status = self.fail_status if failing else (204 if verified else 401)
            held, self.hold_next = self.hold_next, False
            notice = {
                "received_at": time.time(),
                "path": path,
                "webhook_id": headers.get("webhook-id"),
                "type": _pick(body, "type", "event_type", "event.type", "data.type"),
                "subject": _pick(body, "subject", "event.subject", "data.subject", "data.branch_id"),
                "verified": verified,
                "reason": reason,
                "status": status,
                "body": body,
                "held": held,
            }
            self.notices.append(notice)
            if self.record:
                self.record.write(json.dumps(notice, ensure_ascii=False) + "\n")
                self.record.flush()
        print(f"{time.strftime('%H:%M:%S')}  {notice['type']:<44} subject={notice['subject']:<38} "
              f"verified={'yes' if verified else 'no'}  -> {status}" + (f"  ({reason})" if reason else ""),
              flush=True)
        extra = {"Retry-After": str(self.retry_after)} if failing and self.retry_after is not None else {}
        return status, extra, held


def make_handler(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        server_version = "changai-demo-receiver"

        def log_message(self, *args) -> None:  # one line per notice is printed by Receiver
            pass

        def _reply(self, status: int, payload: object = None, headers: dict[str, str] | None = None) -> None:
            data = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if payload is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            if self.path == "/livez":
                self._reply(200, {"status": "ok"})
            elif self.path.split("?")[0] == "/received":
                with receiver.lock:
                    self._reply(200, list(receiver.notices))
            else:
                self._reply(404, {"error": "not found"})

        def do_DELETE(self) -> None:
            if self.path == "/received":
                with receiver.lock:
                    receiver.notices.clear()
                self._reply(204)
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            raw = self._body()
            if self.path.startswith("/hooks/"):
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, held = receiver.receive(self.path, headers, raw)
                if held:  # the answer waits; the sender may be gone by then
                    receiver.released.wait(60)
                    with contextlib.suppress(OSError):
                        self._reply(status, headers=extra)
                    return
                self._reply(status, headers=extra)
            elif self.path == "/control":
                try:
                    ask = json.loads(raw or b"{}")
                except ValueError:
                    self._reply(400, {"error": "JSON body expected"})
                    return
                with receiver.lock:
                    receiver.fail_left = int(ask.get("fail", 0))
                    receiver.fail_status = int(ask.get("status", 503))
                    receiver.retry_after = ask.get("retry_after")
                    if ask.get("hold"):
                        receiver.released.clear()
                        receiver.hold_next = True
                    if ask.get("release"):
                        receiver.hold_next = False
                        receiver.released.set()
                self._reply(200, {"fail": receiver.fail_left, "status": receiver.fail_status})
            else:
                self._reply(404, {"error": "not found"})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="demo receiver of Standard Webhooks notices")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CHANGAI_RECEIVER_PORT", "8009")))
    parser.add_argument("--keep", type=int, default=500, help="notices kept in memory")
    parser.add_argument("--record", help="append every notice to this file as a JSON line")
    args = parser.parse_args(argv)
    secret = os.environ.get("CHANGAI_NOTIFIER_WEBHOOK_SECRET")
    receiver = Receiver(secret, args.keep, args.record)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(receiver))
    server.daemon_threads = True
    print(f"receiver listening on http://{args.host}:{args.port}/hooks/... "
          f"(signature check {'on' if secret else 'OFF: no CHANGAI_NOTIFIER_WEBHOOK_SECRET'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _exit_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM leaves the same clean way as Ctrl-C


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main(sys.argv[1:])
