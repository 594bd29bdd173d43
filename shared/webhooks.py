"""Signed webhooks out of the platform: the SSRF guard, address pinning, Standard Webhooks signatures,
and what a receiver's answer means. The notifier's webhook channels and the intake's answers to
sources both send through here.

* https only, and the host must resolve to public addresses only (IPv6 forms that embed an IPv4
  address are judged by that address); the connection then goes to one of the addresses that were
  checked (IPv4 first, then IPv6, each in turn until one answers), so a DNS answer cannot change
  between the check and the connection. The URL keeps the host's name: TLS (SNI, certificate) and
  ``Host`` name it, and the connection pool is keyed by it. ``allow_private`` (tests, local runs)
  lifts the https and public-address rules, not the pinning.
* No redirects are followed; a receiver's words are scrubbed of phone and ID numbers before they
  are kept anywhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime

import httpcore
import httpx
from standardwebhooks.webhooks import Webhook

from shared.privacy import scrub_text


@dataclass
class Outcome:
    """What an attempt means. ``result``: delivered | retry | throttled | permanent."""

    result: str
    status_code: int | None = None
    errcode: int | None = None
    error: str | None = None
    pause: bool = False  # the channel's configuration is wrong: stop and tell its owner
    retry_after_s: float | None = None  # the receiver asked us to wait at least this long
    latency_ms: int = 0
    body_hash: str | None = None

    @property
    def delivered(self) -> bool:
        return self.result == "delivered"


def classify_http(status: int, retry_after: str | None = None) -> Outcome:
    """A webhook receiver's answer (Standard Webhooks conventions)."""
    if 200 <= status < 300:
        return Outcome("delivered", status_code=status)
    wait = parse_retry_after(retry_after)
    if status == 410:
        return Outcome("permanent", status_code=status, error="410 Gone: the endpoint was removed", pause=True)
    return Outcome("retry", status_code=status, error=f"HTTP {status}", retry_after_s=wait)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    except (TypeError, ValueError):
        return None


def payload_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class UnsafeURL(ValueError):
    """A webhook URL the notifier refuses to call (scheme, or a private address)."""


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible ::a.b.c.d
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT IPv4-translated ::ffff:0:a.b.c.d


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries (mapped, compatible, translated, NAT64, 6to4,
    Teredo): a host that reaches that IPv4 address through it must be judged by it."""
    found = []
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.ipv4_mapped:
        found.append(addr.ipv4_mapped)
    if addr in _COMPATIBLE or addr in _TRANSLATED or any(addr in net for net in _NAT64):
        found.append(low32)
    if addr.sixtofour:
        found.append(addr.sixtofour)
    if addr.teredo:
        found.extend(addr.teredo)  # (server, client)
    return found


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id or addr in _COMPATIBLE:
            return False  # a zone (link-local by nature) or the deprecated ::a.b.c.d form: never public
        embedded = _embedded_ipv4(addr)
        if embedded:
            return all(v4.is_global and not v4.is_multicast for v4 in embedded) and (
                bool(addr.ipv4_mapped) or addr.is_global or any(addr in net for net in _NAT64)
            )
    return addr.is_global and not addr.is_multicast


async def check_url(url: str, *, allow_private: bool, resolve: bool = True) -> tuple[str, list[str]]:
    """Validate a webhook URL; returns (host, addresses it resolves to). Raises UnsafeURL."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises for a port out of range or not a number
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL ({exc})") from None
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
        # the resolver's order, once each; an IPv4 or IPv6 sockaddr's first item is the address text
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        private = [a for a in addresses if not _public(a)]
        if private:
            raise UnsafeURL(f"host {host!r} resolves to a non-public address ({private[0]})")
    return host, addresses


def order_addresses(addresses: list[str]) -> list[str]:
    """IPv4 first, then IPv6, each in the resolver's order: a host without IPv6 egress (many pods)
    connects at once instead of failing on an IPv6 address that sorts first."""
    v4 = [a for a in addresses if ":" not in a]
    return v4 + [a for a in addresses if ":" in a]


# host name -> the addresses checked for it, for connections made in the current task.
_PINS: contextvars.ContextVar[dict[str, list[str]] | None] = contextvars.ContextVar("notifier_pins", default=None)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects a pinned host name to its checked addresses, each in turn until one answers.

    httpcore asks the backend for a TCP connection to the URL's host, then starts TLS on it with
    that host as the server name: so TLS, ``Host`` and the pool stay the name's while the socket
    goes to an address the SSRF guard accepted. Hosts not pinned (the robots' fixed endpoints)
    connect as usual."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None):
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        pins = (_PINS.get() or {}).get(host)
        if not pins or pins == [host]:
            return await self.inner.connect_tcp(
                host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
            )
        failures = []
        # Each address gets its share of the connect timeout (at least 2 s): one that black-holes
        # must not use up the time of the next.
        share = None if timeout is None else max(2.0, timeout / len(pins))
        for ip in pins:
            try:
                return await self.inner.connect_tcp(
                    ip, port, timeout=share, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                failures.append(f"{ip}: {type(exc).__name__}")
        raise httpcore.ConnectError(f"no checked address of {host} answered ({'; '.join(failures)})")

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return await self.inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The system's trust store, plus the operator's CA bundle (PEM) when one is configured
    (a federation's internal CA, or a test's)."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def http_client(ca_bundle: str | None = None) -> httpx.AsyncClient:
    """A client for webhooks: checked addresses (:class:`PinnedBackend`), pooled by host name, no
    redirects, the given CA bundle trusted besides the system's."""
    ca = ca_bundle
    transport = httpx.AsyncHTTPTransport(
        verify=tls_context(ca), limits=httpx.Limits(max_connections=200, max_keepalive_connections=100)
    )
    transport._pool._network_backend = PinnedBackend()  # noqa: SLF001 - httpx does not expose the backend
    return httpx.AsyncClient(transport=transport, follow_redirects=False)


def sign_webhook(secrets: list[str], msg_id: str, body: bytes, now: datetime) -> str:
    """``v1,<sig>`` per active secret, space-separated (several during a rotation's overlap)."""
    text = body.decode()
    return " ".join(Webhook(s).sign(msg_id, now, text) for s in secrets)


def active_secrets(signing: list[dict], now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    return [s["secret"] for s in signing if not s.get("expires_at") or s["expires_at"] > now]


def _elapsed_ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def _scrubbed(outcome: Outcome) -> Outcome:
    """A receiver's words (errmsg, an SMTP reply, an exception) may quote what a person typed: they
    go into the log, delivery.failed and a pause reason on notifier.events, so phone and ID numbers
    are masked first."""
    if outcome.error:
        outcome.error = scrub_text(outcome.error)
    return outcome


async def send_webhook(
    http: httpx.AsyncClient,
    url: str,
    signing: list[dict],
    msg_id: str,
    body: bytes,
    *,
    timeout: float,
    allow_private: bool,
) -> Outcome:
    return _scrubbed(
        await _send_webhook(http, url, signing, msg_id, body, timeout=timeout, allow_private=allow_private)
    )


async def _send_webhook(
    http: httpx.AsyncClient,
    url: str,
    signing: list[dict],
    msg_id: str,
    body: bytes,
    *,
    timeout: float,
    allow_private: bool,
) -> Outcome:
    start = time.perf_counter()
    digest = payload_hash(body)
    try:
        _, addresses = await check_url(url, allow_private=allow_private)
    except UnsafeURL as exc:
        return Outcome(
            "permanent", error=f"refused URL: {exc}", pause=True, latency_ms=_elapsed_ms(start), body_hash=digest
        )
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "changai/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign_webhook(active_secrets(signing), msg_id, body, now),
    }
    # The connection (if a new one is needed) is made in this task: it goes to the checked addresses.
    pinned_as = httpx.URL(url).host  # the name as httpx hands it to the backend (IDNA-encoded)
    token = _PINS.set({**(_PINS.get() or {}), pinned_as: order_addresses(addresses)})
    try:
        response = await http.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return Outcome(
            "retry", error=f"no answer within {timeout:.0f} s", latency_ms=_elapsed_ms(start), body_hash=digest
        )
    except httpx.HTTPError as exc:
        return Outcome(
            "retry", error=f"{type(exc).__name__}: {exc}"[:300], latency_ms=_elapsed_ms(start), body_hash=digest
        )
    finally:
        _PINS.reset(token)
    outcome = classify_http(response.status_code, response.headers.get("retry-after"))
    outcome.latency_ms, outcome.body_hash = _elapsed_ms(start), digest
    return outcome
