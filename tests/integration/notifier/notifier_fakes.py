"""Real receivers on 127.0.0.1 for the notifier's tests.

Each is at least as strict as the service it stands for, as its vendor documents it:

* :class:`Receivers` — one threaded HTTP (or, given a certificate, HTTPS) server playing
  - a WeCom group robot (``POST /cgi-bin/webhook/send?key=…``): ``errcode`` 0, 93000 for an
    unknown key, 40008 for a message type it does not take, 40058 over 4,096 bytes (markdown) /
    2,048 (text), 45009 beyond 20 messages in any 60 s per key;
  - a DingTalk custom robot (``POST /robot/send?access_token=…[&timestamp=…&sign=…]``): checks the
    signature and the timestamp (310000), that the message holds one of the robot's keywords
    (310000), the markdown title (400402), the size (460101 over 20,000 bytes), the token
    (300001); beyond 20 messages in any 60 s it answers 130101 and then blocks the robot for 10
    minutes (every message in the block is refused, and does not end it sooner);
  - Standard Webhooks receivers (``POST /hooks/<name>``), verifying with the ``standardwebhooks``
    library against the secrets registered for the path.
  Every call is recorded (with the TLS server name the client asked for); answers can be
  scripted per robot / hook; a hook can be slow. Tests that run the worker on shortened time
  scale the robots' windows with it (never shorter than the worker's).
* :class:`Mailbox` — a real SMTP server (aiosmtpd): STARTTLS with a locally made certificate,
  AUTH required (and only after TLS), 250 / 4xx / 5xx per recipient as scripted.
* :func:`make_tls` — a CA and a server certificate for ``localhost`` / 127.0.0.1 (cryptography).
"""
from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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


# The vendors' documented limits.
ROBOT_LIMIT, ROBOT_WINDOW_S = 20, 60.0           # both: 20 messages a minute per robot
DINGTALK_BLOCK_S = 600.0                         # DingTalk: then blocked for 10 minutes
WECOM_MAX = {"markdown": 4096, "text": 2048}     # bytes of content
DINGTALK_MAX_BYTES = 20000                       # bytes of the whole message


@dataclass
class Robot:
    secret: str | None = None
    keywords: tuple[str, ...] = ()
    limit: int = ROBOT_LIMIT
    window: float = ROBOT_WINDOW_S
    block: float = 0.0                          # DingTalk: how long the robot is blocked once over budget
    accepted: deque = field(default_factory=deque)
    blocked_until: float = 0.0


def make_tls(directory: Path, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)
             ) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed, as PEM files: (ca.pem, server.pem, server.key).
    The sender trusts ca.pem (CHANGAI_NOTIFIER_CA_BUNDLE); the server presents server.pem."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "changai test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_pem, cert_pem, key_pem


def server_context(cert: Path, key: Path, server_names: list | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if server_names is not None:
        def remember(sock, name, _context):  # the SNI each connection asked for
            server_names.append(name)
        context.sni_callback = remember
    return context


class Receivers:
    def __init__(self, tls: tuple[Path, Path] | None = None):
        self.tls = tls  # (certificate, key): serve HTTPS
        self.server_names: list = []  # SNI of each TLS connection
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.delays: dict[str, float] = {}
        self.arrived: dict[str, int] = defaultdict(int)  # requests that reached a hook, answered or not yet
        self.hooks: dict[str, list[str]] = {}
        self.wecom: dict[str, Robot] = {}
        self.dingtalk: dict[str, Robot] = {}
        self.server: ThreadingHTTPServer | None = None

    # -- set-up ---------------------------------------------------------------------
    def start(self) -> "Receivers":
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        if self.tls:
            context = server_context(*self.tls, self.server_names)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def base(self) -> str:
        if self.tls:  # the certificate names localhost: the client must too
            return f"https://localhost:{self.server.server_address[1]}"
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def hook(self, name: str, secrets: list[str] | None = None) -> str:
        with self.lock:
            self.hooks[f"/hooks/{name}"] = list(secrets or [])
        return f"{self.base}/hooks/{name}"

    def set_hook_secrets(self, name: str, secrets: list[str]) -> None:
        with self.lock:
            self.hooks[f"/hooks/{name}"] = list(secrets)

    def wecom_robot(self, key: str, *, limit: int = ROBOT_LIMIT, window: float = ROBOT_WINDOW_S) -> None:
        with self.lock:
            self.wecom[key] = Robot(limit=limit, window=window)

    def dingtalk_robot(self, token: str, *, secret: str | None = None, keyword: str | None = None,
                       keywords: tuple[str, ...] = (), limit: int = ROBOT_LIMIT, window: float = ROBOT_WINDOW_S,
                       block: float = DINGTALK_BLOCK_S) -> None:
        """A robot with signing (``secret``) and / or custom keywords (up to 10; a message must hold one)."""
        words = tuple(keywords) + ((keyword,) if keyword else ())
        with self.lock:
            self.dingtalk[token] = Robot(secret=secret, keywords=words, limit=limit, window=window, block=block)

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
        with self.lock:
            self.arrived[target] += 1
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
            elif len(Call(0, "", {}, b"", parsed, 0).content.encode()) > WECOM_MAX[parsed["msgtype"]]:
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
            if robot is None:
                answer = {"errcode": 300001, "errmsg": "token is not exist"}
            elif scripted is not None:
                answer = {"errcode": scripted, "errmsg": f"scripted {scripted}"}
            elif robot.secret and not _dingtalk_sign_ok(robot.secret, query):
                answer = {"errcode": 310000, "errmsg": "sign not match"}
            elif time.monotonic() < robot.blocked_until:
                answer = {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute (blocked)"}
            elif len(body) > DINGTALK_MAX_BYTES:
                answer = {"errcode": 460101, "errmsg": "message too large"}
            elif not isinstance(parsed, dict) or parsed.get("msgtype") not in ("text", "markdown", "link",
                                                                                  "actionCard", "feedCard"):
                answer = {"errcode": 400105, "errmsg": "unsupported message type"}
            elif robot.keywords and not any(k in _dingtalk_text(parsed) for k in robot.keywords):
                answer = {"errcode": 310000, "errmsg": "keywords not in content"}
            elif parsed.get("msgtype") == "markdown" and not (parsed.get("markdown") or {}).get("title"):
                answer = {"errcode": 400402, "errmsg": "missing title"}
            elif not self._within_budget(robot):
                robot.blocked_until = time.monotonic() + robot.block
                answer = {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}
            else:
                robot.accepted.append(time.monotonic())
                answer = {"errcode": 0, "errmsg": "ok"}
            self._record(target, headers, body, parsed, answer["errcode"])
        return answer


def _dingtalk_text(parsed) -> str:
    """What DingTalk searches for a keyword: the message's visible text (title and text)."""
    if not isinstance(parsed, dict):
        return ""
    inner = parsed.get(parsed.get("msgtype") or "") or {}
    return " ".join(str(inner.get(k) or "") for k in ("title", "text", "content"))


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
    """A real SMTP server on 127.0.0.1 (aiosmtpd, in its own thread), as strict as a union's relay:
    STARTTLS offered with a locally made certificate (or implicit TLS from the first byte), AUTH
    required and refused before TLS, and answers per recipient as scripted (``refuse``)."""

    USER, PASSWORD = "notifier", "relay-password"

    def __init__(self, tls_dir: Path, *, implicit_tls: bool = False):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.ca, cert, key = make_tls(tls_dir)
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.refusals: dict[str, deque] = defaultdict(deque)  # address -> next answers ("550 …", "450 …")
        self.rcpt_log: list[tuple[str, str]] = []            # (address, answer) of every RCPT
        self.sessions: list[dict] = []                       # per transaction: tls, authenticated user
        self.auth_failures = 0
        self.lock = threading.Lock()
        mailbox = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                with mailbox.lock:
                    queue = mailbox.refusals.get(address)
                    answer = queue.popleft() if queue else "250 OK"
                    mailbox.rcpt_log.append((address, answer))
                if answer.startswith("250"):
                    envelope.rcpt_tos.append(address)
                return answer

            async def handle_DATA(self, server, session, envelope):
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                with mailbox.lock:
                    mailbox.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
                    tls = session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None
                    mailbox.sessions.append({"tls": tls,
                                             "user": getattr(session, "login_data", None)})
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (getattr(auth_data, "login", b"") == self.USER.encode()
                  and getattr(auth_data, "password", b"") == self.PASSWORD.encode())
            if not ok:
                with mailbox.lock:
                    mailbox.auth_failures += 1
            return AuthResult(success=ok, handled=False, auth_data=auth_data)

        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            free = sock.getsockname()[1]
        context = server_context(cert, key)
        tls = {"ssl_context": context} if implicit_tls else {"tls_context": context, "require_starttls": True}
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free, server_hostname="localhost",
                                     auth_required=True, auth_require_tls=not implicit_tls, authenticator=authenticator,
                                     **tls)
        self.implicit_tls = implicit_tls

    def start(self) -> "Mailbox":
        self.controller.start()
        return self

    @property
    def port(self) -> int:
        return self.controller.port

    def env(self) -> dict[str, str]:
        """What the notifier needs to send through this relay (as the environment gives it)."""
        return {"CHANGAI_NOTIFIER_SMTP_HOST": "localhost", "CHANGAI_NOTIFIER_SMTP_PORT": str(self.port),
                "CHANGAI_NOTIFIER_SMTP_USERNAME": self.USER, "CHANGAI_NOTIFIER_SMTP_PASSWORD": self.PASSWORD,
                "CHANGAI_NOTIFIER_CA_BUNDLE": str(self.ca),
                "CHANGAI_NOTIFIER_SMTP_TLS": "true" if self.implicit_tls else "false"}

    def refuse(self, address: str, *answers: str) -> None:
        """The next RCPT answers for ``address`` (e.g. "450 4.2.1 mailbox busy", "550 5.1.1 no such user")."""
        with self.lock:
            self.refusals[address].extend(answers)

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list:
        with self.lock:
            return [m for _, rcpt, m in self.messages if address in rcpt]
