"""The demo notice receiver: a branch's own system receiving Standard Webhooks.

    python deploy/local/receiver.py [--port 8009] [--keep 500]

* ``POST /hooks/<anything>`` verifies the signature with the ``standardwebhooks`` package
  and the secret in ``CHANGAI_NOTIFIER_WEBHOOK_SECRET``; answers 204 when it verifies,
  401 when it does not (the notice is recorded either way); prints one line per notice.
* ``GET /received`` returns the last ``--keep`` notices as JSON (oldest first);
  ``DELETE /received`` forgets them.
* ``POST /control`` with ``{"fail": N, "status": 503, "retry_after": 1}`` makes the next N
  hook calls fail with that status (fault tests: "a notice receiver failing").
* ``GET /livez`` answers 200.

Standard library only, plus ``standardwebhooks``.
"""
from __future__ import annotations

import argparse
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
    def __init__(self, secret: str | None, keep: int):
        self.webhook = Webhook(secret) if secret else None
        self.notices: deque[dict] = deque(maxlen=keep)
        self.lock = threading.Lock()
        self.fail_left, self.fail_status, self.retry_after = 0, 503, None

    def receive(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str]]:
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
            }
            self.notices.append(notice)
        print(f"{time.strftime('%H:%M:%S')}  {notice['type']:<44} subject={notice['subject']:<38} "
              f"verified={'yes' if verified else 'no'}  -> {status}" + (f"  ({reason})" if reason else ""),
              flush=True)
        extra = {"Retry-After": str(self.retry_after)} if failing and self.retry_after is not None else {}
        return status, extra


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
                status, extra = receiver.receive(self.path, headers, raw)
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
                self._reply(200, {"fail": receiver.fail_left, "status": receiver.fail_status})
            else:
                self._reply(404, {"error": "not found"})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="demo receiver of Standard Webhooks notices")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CHANGAI_RECEIVER_PORT", "8009")))
    parser.add_argument("--keep", type=int, default=500, help="notices kept in memory")
    args = parser.parse_args(argv)
    secret = os.environ.get("CHANGAI_NOTIFIER_WEBHOOK_SECRET")
    receiver = Receiver(secret, args.keep)
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
