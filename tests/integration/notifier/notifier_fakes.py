"""Real receivers on 127.0.0.1 for the notifier's tests.

* :class:`Receivers` — one threaded HTTP server playing
  - a WeCom group robot (``POST /cgi-bin/webhook/send?key=…``): ``errcode`` 0, business errors,
    93000 for an unknown key, 45009 when a robot gets more than its budget in the window;
  - a DingTalk custom robot (``POST /robot/send?access_token=…[&timestamp=…&sign=…]``): checks the
    signature and the timestamp (310000), the keyword (310000), the markdown title (400402), the
    token (300001), and answers 130101 over its budget;
  - Standard Webhooks receivers (``POST /hooks/<name>``), verifying with the ``standardwebhooks``
    library against the secrets registered for the path.
  Every call is recorded; answers can be scripted per robot / hook; a hook can be slow.
* :class:`Mailbox` — a real SMTP server (aiosmtpd) keeping what it receives.
"""
from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Call:
    at: float
    target: str
    headers: dict
    body: bytes
    json: object
    answer: object  # HTTP status for hooks, errcode for robots
    verified_with: list[int] = field(default_factory=list)  # indexes of the hook secrets that verify

    @property
    def content(self) -> str:
        body = self.json if isinstance(self.json, dict) else {}
        inner = body.get("markdown") or body.get("text") or {}
        return inner.get("content") or inner.get("text") or ""


@dataclass
class Robot:
    secret: str | None = None
    keyword: str | None = None
    limit: int = 20
    window: float = 60.0
    accepted: deque = field(default_factory=deque)


class Receivers:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.delays: dict[str, float] = {}
        self.hooks: dict[str, list[str]] = {}
        self.wecom: dict[str, Robot] = {}
        self.dingtalk: dict[str, Robot] = {}
        self.server: ThreadingHTTPServer | None = None

    # -- set-up ---------------------------------------------------------------------
    def start(self) -> "Receivers":
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def hook(self, name: str, secrets: list[str] | None = None) -> str:
        with self.lock:
            self.hooks[f"/hooks/{name}"] = list(secrets or [])
        return f"{self.base}/hooks/{name}"

    def set_hook_secrets(self, name: str, secrets: list[str]) -> None:
        with self.lock:
            self.hooks[f"/hooks/{name}"] = list(secrets)

    def wecom_robot(self, key: str, *, limit: int = 20, window: float = 60.0) -> None:
        with self.lock:
            self.wecom[key] = Robot(limit=limit, window=window)

    def dingtalk_robot(self, token: str, *, secret: str | None = None, keyword: str | None = None,
                       limit: int = 20, window: float = 60.0) -> None:
        with self.lock:
            self.dingtalk[token] = Robot(secret=secret, keyword=keyword, limit=limit, window=window)

    def script(self, target: str, answers: list) -> None:
        """Next answers of ``target`` ("hook:<name>", "wecom:<key>", "dingtalk:<token>")."""
        with self.lock:
            self.scripts[target].extend(answers)

    def slow(self, target: str, seconds: float) -> None:
        with self.lock:
            self.delays[target] = seconds

    def received(self, target: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.target == target]

    # -- the fakes -------------------------------------------------------------------
    def _scripted(self, target: str):
        queue = self.scripts.get(target)
        return queue.popleft() if queue else None

    def handle(self, path: str, query: dict, headers: dict, body: bytes) -> tuple[int, dict | None]:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        if path.startswith("/hooks/"):
            return self._hook(path, headers, body, parsed)
        if path == "/cgi-bin/webhook/send":
            return 200, self._wecom(query.get("key", ""), headers, body, parsed)
        if path == "/robot/send":
            return 200, self._dingtalk(query, headers, body, parsed)
        return 404, {"error": "not found"}

    def _record(self, target, headers, body, parsed, answer, verified_with=()) -> None:
        self.calls.append(Call(time.time(), target, headers, body, parsed, answer, list(verified_with)))

    def _hook(self, path, headers, body, parsed) -> tuple[int, None]:
        target = "hook:" + path.removeprefix("/hooks/")
        delay = self.delays.get(target)
        if delay:
            time.sleep(delay)
        with self.lock:
            verified_with = []
            for i, secret in enumerate(self.hooks.get(path, [])):
                try:
                    Webhook(secret).verify(body, headers)
                    verified_with.append(i)
                except (WebhookVerificationError, Exception):  # noqa: BLE001
                    pass
            status = self._scripted(target) or (204 if verified_with else 401)
            self._record(target, headers, body, parsed, status, verified_with)
        return status, None

    def _within_budget(self, robot: Robot) -> bool:
        now = time.monotonic()
        while robot.accepted and robot.accepted[0] <= now - robot.window:
            robot.accepted.popleft()
        return len(robot.accepted) < robot.limit

    def _wecom(self, key, headers, body, parsed) -> dict:
        target = f"wecom:{key}"
        with self.lock:
            robot = self.wecom.get(key)
            scripted = self._scripted(target)
            if robot is None:
                answer = {"errcode": 93000, "errmsg": "invalid webhook url"}
            elif scripted is not None:
                answer = {"errcode": scripted, "errmsg": f"scripted {scripted}"}
            elif not isinstance(parsed, dict) or parsed.get("msgtype") not in ("text", "markdown"):
                answer = {"errcode": 40008, "errmsg": "invalid message type"}
            elif len(Call(0, "", {}, b"", parsed, 0).content.encode()) > (4096 if parsed["msgtype"] == "markdown" else 2048):
                answer = {"errcode": 40058, "errmsg": "content exceed max length"}
            elif not self._within_budget(robot):
                answer = {"errcode": 45009, "errmsg": "api freq out of limit"}
            else:
                robot.accepted.append(time.monotonic())
                answer = {"errcode": 0, "errmsg": "ok"}
            self._record(target, headers, body, parsed, answer["errcode"])
        return answer

    def _dingtalk(self, query, headers, body, parsed) -> dict:
        token = query.get("access_token", "")
        target = f"dingtalk:{token}"
        with self.lock:
            robot = self.dingtalk.get(token)
            scripted = self._scripted(target)
            content = Call(0, "", {}, b"", parsed, 0).content if isinstance(parsed, dict) else ""
            if robot is None:
                answer = {"errcode": 300001, "errmsg": "token is not exist"}
            elif scripted is not None:
                answer = {"errcode": scripted, "errmsg": f"scripted {scripted}"}
            elif robot.secret and not _dingtalk_sign_ok(robot.secret, query):
                answer = {"errcode": 310000, "errmsg": "sign not match"}
            elif robot.keyword and robot.keyword not in content:
                answer = {"errcode": 310000, "errmsg": "keywords not in content"}
            elif parsed.get("msgtype") == "markdown" and not (parsed.get("markdown") or {}).get("title"):
                answer = {"errcode": 400402, "errmsg": "missing title"}
            elif not self._within_budget(robot):
                answer = {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}
            else:
                robot.accepted.append(time.monotonic())
                answer = {"errcode": 0, "errmsg": "ok"}
            self._record(target, headers, body, parsed, answer["errcode"])
        return answer


def _dingtalk_sign_ok(secret: str, query: dict) -> bool:
    """DingTalk's check: HMAC-SHA256(secret, f"{timestamp}\\n{secret}"), base64, within an hour."""
    try:
        ts = int(query["timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() * 1000 - ts) > 3600 * 1000:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()).decode()
    return hmac.compare_digest(query.get("sign", ""), expected)


def _handler(receivers: Receivers):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urllib.parse.urlsplit(self.path)
            # parse_qs decodes '+' as space and %XX: DingTalk's sign arrives URL-encoded.
            query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = receivers.handle(url.path, query, headers, raw)
            data = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.end_headers()
            if data:
                self.wfile.write(data)

    return Handler


class Mailbox:
    """A real SMTP server on 127.0.0.1 (aiosmtpd, in its own thread)."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.lock = threading.Lock()
        mailbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                with mailbox.lock:
                    mailbox.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
                return "250 OK"

        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            free = sock.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free)

    def start(self) -> "Mailbox":
        self.controller.start()
        return self

    @property
    def port(self) -> int:
        return self.controller.port

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list:
        with self.lock:
            return [m for _, rcpt, m in self.messages if address in rcpt]
