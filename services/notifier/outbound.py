"""Calls out: the SSRF guard and one sender per channel kind. Every sender returns an
:class:`~services.notifier.domain.Outcome`; none raises for a receiver's failure.

* Webhooks: https only, and the host must resolve to public addresses only; the connection then
  goes to one of the addresses that were checked (IPv4 first, then IPv6, each in turn until one
  answers), so a DNS answer cannot change between the check and the connection. The URL keeps
  the host's name: TLS (SNI, certificate) and ``Host`` name it, and the connection pool is keyed
  by it (two names on one address never share a TLS connection). ``outbound_allow_private``
  (tests, local runs) lifts the https and public-address rules, not the pinning.
* Robots: only the configured WeCom / DingTalk endpoints (pre-approved hosts); the key or
  token is the secret and is never logged.
* E-mail: the union's own mail relay (settings), STARTTLS or TLS as configured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
import urllib.parse
from collections import OrderedDict
from email.message import EmailMessage
from email.utils import formatdate

import httpx
import orjson

from services.notifier import errcodes
from services.notifier.domain import classify_robot, dingtalk_sign, mask_email
from shared import webhooks
from shared.webhooks import (  # noqa: F401  (the webhook sender lives in shared; re-exported for the notifier)
    Outcome,
    PinnedBackend,
    UnsafeURL,
    _elapsed_ms,
    _scrubbed,
    active_secrets,
    check_url,
    order_addresses,
    payload_hash,
    send_webhook,
    sign_webhook,
    tls_context,
)

log = logging.getLogger(__name__)


def http_client(settings=None, *, ca_bundle: str | None = None) -> httpx.AsyncClient:
    """The worker's client for webhooks and robots (:func:`shared.webhooks.http_client`) with the
    notifier's CA bundle."""
    return webhooks.http_client(ca_bundle if ca_bundle is not None else getattr(settings, "notifier_ca_bundle", None))


async def _robot(
    http: httpx.AsyncClient,
    kind: str,
    url: str,
    body: bytes,
    *,
    timeout: float,
    wecom_throttle_s: float,
    dingtalk_blocked_s: float,
) -> Outcome:
    start = time.perf_counter()
    digest = payload_hash(body)
    try:
        response = await http.post(
            url, content=body, headers={"content-type": "application/json; charset=utf-8"}, timeout=timeout
        )
    except httpx.TimeoutException:
        return Outcome(
            "retry", error=f"no answer within {timeout:.0f} s", latency_ms=_elapsed_ms(start), body_hash=digest
        )
    except httpx.HTTPError as exc:
        # The exception text can hold the URL, and the URL holds the key: say only what kind of error.
        return Outcome(
            "retry",
            error=f"{type(exc).__name__} calling the {kind} robot",
            latency_ms=_elapsed_ms(start),
            body_hash=digest,
        )
    if response.status_code != 200:
        outcome = Outcome("retry", status_code=response.status_code, error=f"HTTP {response.status_code}")
    else:
        try:
            answer = orjson.loads(response.content)
            errcode, errmsg = answer.get("errcode"), answer.get("errmsg")
            errcode = int(errcode) if errcode is not None else None
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            errcode, errmsg = None, "answer is not JSON"
        outcome = classify_robot(
            kind, errcode, errmsg, wecom_throttle_s=wecom_throttle_s, dingtalk_blocked_s=dingtalk_blocked_s
        )
        outcome.status_code = 200
        _repeats(kind, url, outcome)
    outcome.latency_ms, outcome.body_hash = _elapsed_ms(start), digest
    return _scrubbed(outcome)


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
    return await _robot(
        http, "wecom", wecom_url(base, key), body, timeout=timeout, wecom_throttle_s=throttle_s, dingtalk_blocked_s=0
    )


async def send_dingtalk(
    http, base: str, token: str, secret: str | None, body: bytes, *, timeout: float, blocked_s: float
) -> Outcome:
    return await _robot(
        http,
        "dingtalk",
        dingtalk_url(base, token, secret),
        body,
        timeout=timeout,
        wecom_throttle_s=0,
        dingtalk_blocked_s=blocked_s,
    )


def email_message(
    *,
    sender: str,
    to: list[str],
    subject: str,
    text: str,
    html: str,
    message_id: str,
    unsubscribe: list[str] | None = None,
    one_click: bool = False,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id  # stable per notice: a mail client shows a re-sent copy once
    message["Auto-Submitted"] = "auto-generated"
    if unsubscribe:
        # RFC 2369 / RFC 8058: the mail client's own "unsubscribe" button; one-click only with an https URL.
        message["List-Unsubscribe"] = ", ".join(f"<{u}>" for u in unsubscribe)
        if one_click:
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def unsubscribe_token(key: bytes, channel_id: str, address: str) -> str:
    """What proves an unsubscribe link was ours, for this channel and this address (no login)."""
    mac = hmac.new(key, f"unsubscribe|{channel_id}|{address.lower()}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


def unsubscribe_links(settings, channel_id: str | None, address: str) -> tuple[list[str], bool]:
    """(List-Unsubscribe URIs, one-click?) for one recipient of a channel."""
    links = [
        f"mailto:{settings.notifier_smtp_from}?subject="
        + urllib.parse.quote(f"unsubscribe {channel_id or ''} {address}".strip())
    ]
    public = getattr(settings, "notifier_public_url", None)
    if public and channel_id:
        query = urllib.parse.urlencode(
            {"address": address, "token": unsubscribe_token(settings.data_key_bytes(), channel_id, address)}
        )
        links.insert(0, f"{public.rstrip('/')}/v1/unsubscribe/{channel_id}?{query}")
        return links, public.startswith("https://")
    return links, False


_MESSAGE_ID = re.compile(r"^<[^.]+\.([0-9a-fA-F-]{36})@")

# Per notice (by Message-ID): recipients that took it and those that refused it for good, so a
# retry goes only to the others. A channel's partition has one owner, so its worker's memory is
# enough; after a restart a retry may reach an earlier recipient again (same Message-ID: mail
# clients show it once).
_MAIL_PROGRESS: OrderedDict[str, dict] = OrderedDict()


def _smtp_client(settings, timeout: float):
    import aiosmtplib

    password = settings.notifier_smtp_password.get_secret_value() if settings.notifier_smtp_password else None
    implicit = bool(settings.notifier_smtp_tls)
    starttls = getattr(settings, "notifier_smtp_starttls", None)
    if implicit:
        starttls = False
    elif starttls is None and settings.notifier_smtp_username:
        starttls = True  # credentials never go in clear: no STARTTLS, no AUTH
    # starttls None: aiosmtplib upgrades whenever the relay offers STARTTLS.
    return aiosmtplib.SMTP(
        hostname=settings.notifier_smtp_host,
        port=settings.notifier_smtp_port,
        username=settings.notifier_smtp_username,
        password=password,
        use_tls=implicit,
        start_tls=starttls,
        tls_context=tls_context(getattr(settings, "notifier_ca_bundle", None)),
        timeout=timeout,
    )


async def send_email(
    settings, to: list[str], payload: dict, message_id: str, *, timeout: float, channel_id: str | None = None
) -> Outcome:
    return _scrubbed(await _send_email(settings, to, payload, message_id, timeout=timeout, channel_id=channel_id))


async def _send_email(
    settings, to: list[str], payload: dict, message_id: str, *, timeout: float, channel_id: str | None = None
) -> Outcome:
    """One message per recipient over one connection (each with its own unsubscribe link).

    * a 5xx answer, or the relay refusing our credentials, is permanent (not retried);
    * a recipient refused with 4xx is retried alone; one refused with 5xx is recorded failed;
      the notice is marked delivered only when every recipient took it.
    """
    import aiosmtplib

    start = time.perf_counter()
    if channel_id is None and (m := _MESSAGE_ID.match(message_id)):
        channel_id = m.group(1)
    progress = _MAIL_PROGRESS.setdefault(message_id, {"accepted": set(), "failed": {}})
    _MAIL_PROGRESS.move_to_end(message_id)
    while len(_MAIL_PROGRESS) > 10_000:
        _MAIL_PROGRESS.popitem(last=False)
    pending = [a for a in dict.fromkeys(to) if a not in progress["accepted"] and a not in progress["failed"]]
    later: dict[str, str] = {}
    digest = None
    client = _smtp_client(settings, timeout)

    def outcome(result: str, **kw) -> Outcome:
        if result != "retry":
            _MAIL_PROGRESS.pop(message_id, None)
        return Outcome(result, latency_ms=_elapsed_ms(start), body_hash=digest, **kw)

    try:
        if pending:
            await client.connect()
        for address in pending:
            links, one_click = unsubscribe_links(settings, channel_id, address)
            message = email_message(
                sender=settings.notifier_smtp_from,
                to=[address],
                subject=payload["subject"],
                text=payload["text"],
                html=payload["html"],
                message_id=message_id,
                unsubscribe=links,
                one_click=one_click,
            )
            digest = digest or payload_hash(message.as_bytes())
            try:
                await client.send_message(message, sender=settings.notifier_smtp_from, recipients=[address])
                progress["accepted"].add(address)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refusal = exc.recipients[0] if exc.recipients else None
                code = refusal.code if refusal else 550
                words = f"{code} {(refusal.message if refusal else '')}".strip()[:120]
                if 500 <= code < 600:
                    progress["failed"][address] = words
                else:
                    later[address] = words
    except aiosmtplib.SMTPAuthenticationError as exc:
        log.error("the mail relay refused the notifier's credentials (CHANGAI_NOTIFIER_SMTP_USERNAME / _PASSWORD)")
        return outcome("permanent", status_code=exc.code, error=f"mail relay refused our credentials ({exc.code})")
    except aiosmtplib.SMTPResponseException as exc:
        kind = "permanent" if 500 <= exc.code < 600 else "retry"
        return outcome(kind, status_code=exc.code, error=f"SMTP {exc.code}: {exc.message}"[:300])
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        if isinstance(exc, aiosmtplib.SMTPException) and "not supported" in str(exc):
            # The relay lacks AUTH or STARTTLS that our settings require: the same answer next time.
            log.error("the mail relay does not offer what the notifier's settings require", extra={"why": str(exc)})
            return outcome("permanent", error=f"mail relay: {exc}"[:300])
        return outcome("retry", error=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if client.is_connected:
            try:
                await client.quit()
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                client.close()
    accepted, failed, total = progress["accepted"], progress["failed"], len(set(to))
    told = f"delivered to {len(accepted)} of {total}"
    if later:
        return outcome(
            "retry", status_code=int(next(iter(later.values()))[:3]), error=f"{told}; will retry {_masked(later)}"
        )
    if failed:
        code = int(next(iter(failed.values()))[:3])
        if not accepted:  # every address refused: the channel's list is wrong
            return outcome(
                "permanent", status_code=code, error=f"every recipient refused: {_masked(failed)}", pause=True
            )
        return outcome("permanent", status_code=code, error=f"{told}; refused for good: {_masked(failed)}")
    return outcome("delivered", status_code=250)


def _masked(answers: dict[str, str]) -> str:
    return "; ".join(f"{mask_email(a)} ({w})" for a, w in answers.items())[:300]
