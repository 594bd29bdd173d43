"""Calls out: the SSRF guard and one sender per channel kind. Every sender returns an
:class:`~services.notifier.domain.Outcome`; none raises for a receiver's failure.

* Webhooks: https only, and the host must resolve to public addresses only; the request then
  goes to the address that was checked (with the host's name for TLS and ``Host``), so a DNS
  answer cannot change between the check and the connection. ``outbound_allow_private``
  (tests, local runs) lifts both rules.
* Robots: only the configured WeCom / DingTalk endpoints (pre-approved hosts); the key or
  token is the secret and is never logged.
* E-mail: the union's own mail relay (settings), STARTTLS or TLS as configured.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import time
import urllib.parse
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from services.notifier import errcodes
from services.notifier.domain import Outcome, classify_http, classify_robot, dingtalk_sign, payload_hash


class UnsafeURL(ValueError):
    """A webhook URL the notifier refuses to call (scheme, or a private address)."""


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


async def check_url(url: str, *, allow_private: bool, resolve: bool = True) -> tuple[str, list[str]]:
    """Validate a webhook URL; returns (host, addresses it resolves to). Raises UnsafeURL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeURL("must be an absolute https:// URL")
    if parts.scheme != "https" and not allow_private:
        raise UnsafeURL("must use https")
    if parts.username or parts.password:
        raise UnsafeURL("must not carry credentials")
    host = parts.hostname
    if not resolve:
        return host, []
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UnsafeURL(f"host {host!r} does not resolve ({exc.strerror or exc})") from None
        addresses = sorted({info[4][0] for info in infos})
    if not allow_private:
        private = [a for a in addresses if not _public(a)]
        if private:
            raise UnsafeURL(f"host {host!r} resolves to a non-public address ({private[0]})")
    return host, addresses


def sign_webhook(secrets: list[str], msg_id: str, body: bytes, now: datetime) -> str:
    """``v1,<sig>`` per active secret, space-separated (several during a rotation's overlap)."""
    text = body.decode()
    return " ".join(Webhook(s).sign(msg_id, now, text) for s in secrets)


def active_secrets(signing: list[dict], now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    return [s["secret"] for s in signing if not s.get("expires_at") or s["expires_at"] > now]


def _elapsed_ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


async def send_webhook(http: httpx.AsyncClient, url: str, signing: list[dict], msg_id: str, body: bytes, *,
                       timeout: float, allow_private: bool) -> Outcome:
    start = time.perf_counter()
    digest = payload_hash(body)
    try:
        host, addresses = await check_url(url, allow_private=allow_private)
    except UnsafeURL as exc:
        return Outcome("permanent", error=f"refused URL: {exc}", pause=True, latency_ms=_elapsed_ms(start),
                       body_hash=digest)
    now = datetime.now(timezone.utc)
    headers = {"content-type": "application/json", "user-agent": "changai-notifier/1",
               "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": sign_webhook(active_secrets(signing), msg_id, body, now)}
    target, extensions = url, {}
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and addresses and addresses[0] != host:
        # Connect to the address that was checked; TLS and Host still name the host.
        ip = addresses[0]
        netloc = f"[{ip}]" if ":" in ip else ip
        if parts.port:
            netloc += f":{parts.port}"
        target = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        headers["host"] = parts.netloc
        extensions = {"sni_hostname": host}
    try:
        response = await http.post(target, content=body, headers=headers, timeout=timeout, extensions=extensions)
    except httpx.TimeoutException:
        return Outcome("retry", error=f"no answer within {timeout:.0f} s", latency_ms=_elapsed_ms(start),
                       body_hash=digest)
    except httpx.HTTPError as exc:
        return Outcome("retry", error=f"{type(exc).__name__}: {exc}"[:300], latency_ms=_elapsed_ms(start),
                       body_hash=digest)
    outcome = classify_http(response.status_code, response.headers.get("retry-after"))
    outcome.latency_ms, outcome.body_hash = _elapsed_ms(start), digest
    return outcome


async def _robot(http: httpx.AsyncClient, kind: str, url: str, body: bytes, *, timeout: float,
                 wecom_throttle_s: float, dingtalk_blocked_s: float) -> Outcome:
    start = time.perf_counter()
    digest = payload_hash(body)
    try:
        response = await http.post(url, content=body, headers={"content-type": "application/json; charset=utf-8"},
                                   timeout=timeout)
    except httpx.TimeoutException:
        return Outcome("retry", error=f"no answer within {timeout:.0f} s", latency_ms=_elapsed_ms(start),
                       body_hash=digest)
    except httpx.HTTPError as exc:
        # The exception text can hold the URL, and the URL holds the key: say only what kind of error.
        return Outcome("retry", error=f"{type(exc).__name__} calling the {kind} robot", latency_ms=_elapsed_ms(start),
                       body_hash=digest)
    if response.status_code != 200:
        outcome = Outcome("retry", status_code=response.status_code, error=f"HTTP {response.status_code}")
    else:
        try:
            answer = orjson.loads(response.content)
            errcode, errmsg = answer.get("errcode"), answer.get("errmsg")
            errcode = int(errcode) if errcode is not None else None
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            errcode, errmsg = None, "answer is not JSON"
        outcome = classify_robot(kind, errcode, errmsg, wecom_throttle_s=wecom_throttle_s,
                                 dingtalk_blocked_s=dingtalk_blocked_s)
        outcome.status_code = 200
        _repeats(kind, url, outcome)
    outcome.latency_ms, outcome.body_hash = _elapsed_ms(start), digest
    return outcome


# Answers that pause a channel only when they repeat (DingTalk's 300005 is also reported for
# valid tokens now and then): how many came in a row, per robot (a hash of its URL without the
# signature, never the key itself). A worker owns a channel's partition, so its memory suffices;
# after a restart the count starts again, which only delays a pause.
_REPEATS: dict[str, int] = {}


def _robot_id(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k in ("key", "access_token")]
    return hashlib.sha256(f"{parts.path}?{query}".encode()).hexdigest()[:16]


def _repeats(kind: str, url: str, outcome: Outcome) -> None:
    """Turn a ``retry_then_pause`` answer into a pause once it came PAUSE_AFTER_REPEATS times in a row."""
    rid = _robot_id(url)
    known = errcodes.lookup(kind, outcome.errcode) if outcome.errcode is not None else None
    if known is None or known.action != "retry_then_pause":
        _REPEATS.pop(rid, None)
        return
    _REPEATS[rid] = n = _REPEATS.get(rid, 0) + 1
    if len(_REPEATS) > 10_000:
        _REPEATS.clear()
    if n >= errcodes.PAUSE_AFTER_REPEATS:
        _REPEATS.pop(rid, None)
        outcome.result, outcome.pause = "permanent", True
        outcome.error = f"{outcome.error} ({n} times in a row)"


def wecom_url(base: str, key: str) -> str:
    return f"{base}?{urllib.parse.urlencode({'key': key})}"


def dingtalk_url(base: str, token: str, secret: str | None, now_ms: int | None = None) -> str:
    query = urllib.parse.urlencode({"access_token": token})
    if secret:
        ts = now_ms if now_ms is not None else int(time.time() * 1000)
        query += f"&timestamp={ts}&sign={dingtalk_sign(secret, ts)}"
    return f"{base}?{query}"


async def send_wecom(http, base: str, key: str, body: bytes, *, timeout: float, throttle_s: float) -> Outcome:
    return await _robot(http, "wecom", wecom_url(base, key), body, timeout=timeout, wecom_throttle_s=throttle_s,
                        dingtalk_blocked_s=0)


async def send_dingtalk(http, base: str, token: str, secret: str | None, body: bytes, *, timeout: float,
                        blocked_s: float) -> Outcome:
    return await _robot(http, "dingtalk", dingtalk_url(base, token, secret), body, timeout=timeout,
                        wecom_throttle_s=0, dingtalk_blocked_s=blocked_s)


def email_message(*, sender: str, to: list[str], subject: str, text: str, html: str, message_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id  # stable per notice: a mail client shows a re-sent copy once
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


async def send_email(settings, to: list[str], payload: dict, message_id: str, *, timeout: float) -> Outcome:
    import aiosmtplib

    start = time.perf_counter()
    message = email_message(sender=settings.notifier_smtp_from, to=to, subject=payload["subject"],
                            text=payload["text"], html=payload["html"], message_id=message_id)
    digest = payload_hash(message.as_bytes())
    password = settings.notifier_smtp_password.get_secret_value() if settings.notifier_smtp_password else None
    try:
        errors, _ = await aiosmtplib.send(
            message, hostname=settings.notifier_smtp_host, port=settings.notifier_smtp_port,
            username=settings.notifier_smtp_username, password=password, use_tls=settings.notifier_smtp_tls,
            start_tls=settings.notifier_smtp_starttls if not settings.notifier_smtp_tls else False, timeout=timeout)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        permanent = all(500 <= c < 600 for c in codes)
        return Outcome("permanent" if permanent else "retry", status_code=codes[0] if codes else None,
                       error=f"recipients refused ({', '.join(map(str, codes))})", pause=permanent,
                       latency_ms=_elapsed_ms(start), body_hash=digest)
    except aiosmtplib.SMTPResponseException as exc:
        return Outcome("retry", status_code=exc.code, error=f"SMTP {exc.code}: {exc.message}"[:300],
                       latency_ms=_elapsed_ms(start), body_hash=digest)
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
        return Outcome("retry", error=f"{type(exc).__name__}: {exc}"[:300], latency_ms=_elapsed_ms(start),
                       body_hash=digest)
    if errors:  # some recipients refused, others took it: delivered, with a note
        return Outcome("delivered", status_code=250, error=f"{len(errors)} recipient(s) refused",
                       latency_ms=_elapsed_ms(start), body_hash=digest)
    return Outcome("delivered", status_code=250, latency_ms=_elapsed_ms(start), body_hash=digest)
