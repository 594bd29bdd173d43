"""Published schemas of every event type, and the AsyncAPI 3.0 document.

``python -m shared.events.catalog --write`` writes ``shared/events/schemas/<type>.json``
and ``docs/asyncapi.yaml``; the tests hold the code to those committed snapshots.
A new event type or a backward-compatible change (new optional field) is written
with ``--write``; a breaking change needs a new version (``.v2``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from shared.events import REGISTRY, json_schema
from shared.topics import TOPICS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"


def schemas() -> dict[str, dict[str, Any]]:
    return {name: json_schema(cls) for name, cls in sorted(REGISTRY.items())}


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in ``new`` would break a consumer or producer written against ``old``."""
    problems = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name in old_props:
        if name not in new_props:
            problems.append(f"field {name!r} removed")
        elif old_props[name].get("type") != new_props[name].get("type"):
            problems.append(f"field {name!r} changed type")
    for name in set(new.get("required", [])) - set(old.get("required", [])):
        problems.append(f"field {name!r} became required")
    return problems


def asyncapi() -> dict[str, Any]:
    channels, operations, messages = {}, {}, {}
    for name, cls in sorted(REGISTRY.items()):
        msg_id = name.replace(".", "_")
        messages[msg_id] = {
            "name": name,
            "title": cls.__name__,
            "summary": (cls.__doc__ or name).strip().splitlines()[0],
            "contentType": "application/cloudevents+json; charset=utf-8",
            "payload": {"$ref": f"../shared/events/schemas/{name}.json"},
            "bindings": {"kafka": {"key": {"type": "string", "description": f"partition key: {cls.subject_field}"}}},
        }
    # The upstream types (shared.events.upstream): what other systems send to the intake, on intake.<kind>.
    from shared.events.upstream import TOPIC_OF, UPSTREAM

    for name, ucls in sorted(UPSTREAM.items()):
        messages[name.replace(".", "_")] = {
            "name": name,
            "title": ucls.__name__,
            "summary": (ucls.__doc__ or name).strip().splitlines()[0],
            "contentType": "application/cloudevents+json; charset=utf-8",
            "payload": {"$ref": f"../shared/events/schemas/upstream/{name}.json"},
            "description": "Upstream: the `data` of a CloudEvent an external system sends to the intake "
            "(POST /v1/events, or its intake topic when it has one).",
        }
    for topic in TOPICS:
        chan = topic.name.replace(".", "_")
        msgs = {
            m: {"$ref": f"#/components/messages/{m}"}
            for m, cls in ((n.replace(".", "_"), c) for n, c in sorted(REGISTRY.items()))
            if cls.topic == topic.name
        }
        upstream = {
            n.replace(".", "_"): {"$ref": f"#/components/messages/{n.replace('.', '_')}"}
            for n in sorted(UPSTREAM)
            if TOPIC_OF.get(n) == topic.name
        }
        msgs |= upstream
        channels[chan] = {
            "address": topic.name,
            "description": topic.purpose,
            "messages": msgs,
            "bindings": {
                "kafka": {
                    "topic": topic.name,
                    "partitions": topic.partitions,
                    "topicConfiguration": {
                        "retention.ms": topic.retention_ms,
                        "cleanup.policy": [topic.cleanup_policy],
                    },
                }
            },
        }
        if upstream:  # produced by other systems, read by the intake
            operations[f"receive_{chan}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{chan}"},
                "messages": [{"$ref": f"#/channels/{chan}/messages/{m}"} for m in upstream],
            }
        elif msgs:
            operations[f"publish_{chan}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{chan}"},
                "messages": [{"$ref": f"#/channels/{chan}/messages/{m}"} for m in msgs],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Changai (产改) events",
            "version": "1.0.0",
            "description": "Domain events of the Changai platform: CloudEvents 1.0, Kafka binding, structured mode.",
        },
        "servers": {"local": {"host": "127.0.0.1:19092", "protocol": "kafka"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render_asyncapi() -> str:
    return yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True)


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, schema in schemas().items():
        path = SCHEMA_DIR / f"{name}.json"
        if path.exists():
            problems = breaking_changes(json.loads(path.read_text()), schema)
            if problems:
                raise SystemExit(f"{name}: breaking change ({'; '.join(problems)}): publish a new version instead")
        path.write_text(render_schema(schema), encoding="utf-8")
    from shared.events import upstream

    upstream.write()  # the intake's upstream catalogue, refused the same way on a breaking change
    ASYNCAPI.parent.mkdir(exist_ok=True)
    ASYNCAPI.write_text(render_asyncapi(), encoding="utf-8")
    print(f"{len(REGISTRY)} event schemas and {ASYNCAPI.relative_to(ROOT)} written")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    if parser.parse_args().write:
        write()
    else:
        print(render_asyncapi())
