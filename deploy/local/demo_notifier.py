"""Article-replay steps of the notifier (通知), appended to ``demo.STEPS``.

* ``channels``: the channels the notifier has (locally: the federation webhook of
  ``CHANGAI_NOTIFIER_WEBHOOKS``, pointing at the demo receiver), secrets masked.
* ``log``: what the demo so far has been notified of, from the delivery log — per event type,
  how many notices were delivered, after how many attempts, how fast — and one delivery's
  attempt in full (time, status, latency, payload hash).
* ``preview``: how a branch's WeCom and DingTalk robots would show a completed training
  session (the article's "【培训结业】…" notice), rendered by the service's templates.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter

NOTIFIER_URL = os.environ.get("CHANGAI_DEMO_NOTIFIER_URL", "http://127.0.0.1:8004")


def _skip(demo, reason: str) -> Exception:
    return sys.modules[type(demo).__module__].Skip(reason)


def _url(demo) -> str:
    return getattr(demo.config, "notifier_url", None) or NOTIFIER_URL


def _headers() -> dict[str, str]:
    from shared.auth import mint_token

    return {"Authorization": "Bearer " + mint_token("article-replay", ["notifier:read"], "640000")}


async def _get(demo, path: str, **params):
    try:
        response = await demo.client.get(f"{_url(demo)}{path}", params=params, headers=_headers())
    except Exception as exc:  # noqa: BLE001
        raise _skip(demo, f"notifier API not reachable at {_url(demo)} ({exc.__class__.__name__})") from None
    if response.status_code != 200:
        demo.failures += 1
        demo.row("notifier", path[:46], f"{response.status_code} {response.text[:80]}")
        return None
    return response.json()


async def step_channels(demo) -> None:
    if not demo.config.runs("notifier-api"):
        raise _skip(demo, "the notifier API is not running")
    listed = await _get(demo, "/v1/channels")
    if listed is None:
        return
    for ch in listed["items"][:5]:
        demo.row("channels", f"{ch['kind']} {ch['name']}"[:46],
                 f"{ch['owner']['kind']} {ch['owner']['region_code']}, {ch['scope']}, {ch['status']}, "
                 f"{ch['config'].get('url') or ch['config'].get('key') or ''}")
    if not listed["items"]:
        demo.row("channels", "none registered", "set CHANGAI_NOTIFIER_WEBHOOKS or POST /v1/channels")


async def step_log(demo) -> None:
    if not demo.config.runs("notifier-api"):
        raise _skip(demo, "the notifier API is not running")
    deadline = time.monotonic() + 20
    while True:  # the demo's last events may still be on their way
        page = await _get(demo, "/v1/deliveries", limit=200)  # the newest 200 (every list pages at most 200)
        if page is None:
            return
        items = page["items"]
        if all(d["status"] in ("delivered", "dead") for d in items) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    by_type = Counter((d["event_type"].removeprefix("changai.").removesuffix(".v1"), d["status"]) for d in items)
    for (event_type, status), n in sorted(by_type.items()):
        latencies = sorted(a["latency_ms"] for d in items if d["event_type"].endswith(event_type + ".v1")
                           for a in d["attempt_log"] if a["outcome"] == "delivered" and a["latency_ms"] is not None)
        median = f", median request {latencies[len(latencies) // 2]} ms" if latencies and status == "delivered" else ""
        demo.row("log", event_type[:46], f"{n} {status}{median}")
    if not items:
        demo.failures += 1
        demo.row("log", "no deliveries", "the notifier worker delivered nothing")
        return
    d = items[-1]
    a = d["attempt_log"][-1] if d["attempt_log"] else None
    if a:
        demo.row("log", f"delivery {d['id'][:8]} attempt {a['n']}",
                 f"{a['outcome']} HTTP {a['status_code']} in {a['latency_ms']} ms, sha256 {a['payload_hash'][:12]}…")


async def step_preview(demo) -> None:
    if not demo.config.runs("notifier-api"):
        raise _skip(demo, "the notifier API is not running")
    event_type = "changai.training.session.completed.v1"
    for kind in ("wecom", "dingtalk"):
        shown = await _get(demo, f"/v1/templates/{event_type}", kind=kind, keyword="产改")
        if shown is None:
            return
        body = shown["body"]
        content = (body.get("markdown") or {}).get("content") or (body.get("markdown") or {}).get("text") or ""
        lines = [line for line in content.splitlines() if line.strip()]
        demo.row("preview", f"{kind} markdown ({len(content.encode())} bytes)", lines[1] if len(lines) > 1 else "")


STEPS = [("channels", step_channels), ("log", step_log), ("preview", step_preview)]
