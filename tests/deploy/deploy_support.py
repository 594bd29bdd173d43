"""Shared helpers of the deployment checks (tests/deploy/test_deploy_*.py).

Everything here is offline: the tools come from deploy/tools/install-tools.sh (cached in
$CHANGAI_CACHE or ~/.cache/changai) and the Python packages of the `test` extra; the
schemas from kubernetes-validate (Kubernetes) and vendor/schemas/ (CRDs, Compose).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
VENDOR = ROOT / "vendor" / "schemas"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DASHBOARDS_DIR = ROOT / "deploy" / "grafana" / "dashboards"
RULES_DIR = ROOT / "deploy" / "prometheus"

# Kubernetes versions the objects must be valid for: the oldest we support and the newest
# whose schemas the pinned kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31", "1.37")

for extra in (ROOT, ROOT / "deploy" / "local", ROOT / "deploy" / "tools"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


# --------------------------------------------------------------------------- tools

def _venv_bin(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


@functools.lru_cache(maxsize=None)
def kustomize_binary() -> tuple[str | None, str]:
    """(path of the pinned kustomize, "" ) or (None, why not)."""
    script = ROOT / "deploy" / "tools" / "install-tools.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return None, f"deploy/tools/install-tools.sh failed: {done.stderr.strip()[-2000:]}"
    for line in done.stdout.splitlines():
        name, _, path = line.partition(" ")
        if name == "kustomize":
            return path, ""
    return None, f"install-tools.sh printed no kustomize path: {done.stdout!r}"


def hadolint_binary() -> str | None:
    return _venv_bin("hadolint")


def run_build(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def parse_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@functools.lru_cache(maxsize=None)
def build(target: str) -> tuple[dict, ...]:
    """The objects of `kustomize build deploy/k8s/<target>` (pinned kustomize)."""
    binary, why = kustomize_binary()
    if binary is None:
        raise AssertionError(why)
    return tuple(parse_docs(run_build([binary, "build", str(K8S / target)])))


def overlay_objects(overlay: str) -> list[dict]:
    return list(build(f"overlays/{overlay}"))


def find(objects: Iterable[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Iterable[dict], kind: str, name: str) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- code facts

@dataclass(frozen=True)
class ServiceFact:
    name: str
    module: str
    role: str  # "api" or "worker"
    port: int
    database: str | None
    command: tuple[str, ...]


def services() -> list[ServiceFact]:
    """The services of deploy/local/stack.py (SERVICES): the one list, read from the code."""
    import stack

    facts = []
    for spec in stack.SERVICES:
        argv = list(spec.argv)
        module = argv[argv.index("-m") + 1]
        role = argv[-1]
        facts.append(ServiceFact(spec.name, module, role, spec.http_port, spec.database, ("python", *argv)))
    return facts


def service_databases() -> tuple[str, ...]:
    import stack

    return tuple(stack.SERVICE_DATABASES)


def topics():
    """Every topic Kubernetes must create: the declared ones and the stream processors' own."""
    from shared.topics import STREAM_TOPICS, TOPICS

    return (*TOPICS, *STREAM_TOPICS)


def domain_topics() -> list[str]:
    from shared.topics import domain_topics as names

    return names()


@functools.lru_cache(maxsize=None)
def faust_table_partitions() -> int:
    """Partitions Faust gives its tables' changelogs (shared/streams.py): co-partitioned with the sources."""
    from shared.settings import Settings
    from shared.streams import create_stream_app

    return int(create_stream_app("deploy-check", Settings()).conf.topic_partitions)


# --------------------------------------------------------------------------- compose

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


def interpolate(node: Any, env: dict[str, str], used: set[str] | None = None) -> Any:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, ${VAR:+alt}, $$); raises KeyError for a required variable that is unset."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, used) for v in node]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        expr = match.group("braced") if match.group("braced") is not None else match.group("plain")
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])(.*))?", expr, re.S)
        if not m:
            raise ValueError(f"bad interpolation ${{{expr}}}")
        name, colon, op, arg = m.groups()
        if used is not None:
            used.add(name)
        value = env.get(name)
        is_set = value is not None and (value != "" or not colon)
        if op is None:
            return value or ""
        if op == "-":
            return value if is_set else interpolate(arg, env, used)
        if op == "?":
            if not is_set:
                raise KeyError(f"{name}: {arg}")
            return value
        return interpolate(arg, env, used) if is_set else ""  # "+"

    return _VAR.sub(replace, node)


@functools.lru_cache(maxsize=None)
def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose() -> dict:
    """docker-compose.yml after interpolation with .env.example (what `docker compose` sees)."""
    return interpolate(compose_raw(), read_env_file(ENV_EXAMPLE))


def compose_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# --------------------------------------------------------------------------- schemas

class SchemaMissing(AssertionError):
    pass


def _k8s_schema_dir(version: str) -> Path:
    import kubernetes_validate

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    folder = base / f"v{version}.0-local-strict"
    if not folder.is_dir():
        raise AssertionError(f"kubernetes-validate has no schemas for Kubernetes {version} (has: "
                             f"{sorted(p.name for p in base.iterdir())})")
    return folder


@functools.lru_cache(maxsize=None)
def _k8s_registry(version: str) -> tuple[Registry, Path]:
    folder = _k8s_schema_dir(version)
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Registry().with_resource("_definitions.json", Resource.from_contents(definitions)).crawl()
    return registry, folder


@functools.lru_cache(maxsize=None)
def _k8s_definitions(version: str) -> dict:
    return json.loads((_k8s_schema_dir(version) / "_definitions.json").read_text())["$defs"]


DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"


def _inline_refs(node: Any, definitions: dict, done: dict, active: set) -> Any:
    """`node` with its references into `_definitions.json` replaced by the definitions
    themselves (shared, memoised), so validation does no reference lookups (the slow part of
    jsonschema); a recursive one stays a reference, made absolute."""
    if isinstance(node, list):
        return [_inline_refs(v, definitions, done, active) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and (ref.startswith("#/$defs/") or "_definitions.json#/$defs/" in ref):
        name = ref.rsplit("/", 1)[1]
        if set(node) <= {"$ref", "description"}:
            if name in done:
                return done[name]
            if name not in active:
                active.add(name)
                done[name] = _inline_refs(definitions[name], definitions, done, active)
                active.discard(name)
                return done[name]
        node = {**node, "$ref": f"{DEFINITIONS_URI}#/$defs/{name}"}
    return {k: _inline_refs(v, definitions, done, active) for k, v in node.items()}


@functools.lru_cache(maxsize=None)
def k8s_validator(version: str, api_version: str, kind: str):
    registry, folder = _k8s_registry(version)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = folder / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = _inline_refs(json.loads(path.read_text()), _k8s_definitions(version), {}, set())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _python_pattern(pattern: str) -> str | None:
    """A Go (RE2) pattern as a Python one: inline flags moved to the front; None if impossible."""
    for candidate in (pattern, re.sub(r"^\^\(\?([a-zA-Z]+)\)", r"(?\1)^", pattern)):
        try:
            re.compile(candidate)
            return candidate
        except re.error:
            continue
    return None


def _open(branch: Any) -> Any:
    if isinstance(branch, dict) and branch.get("additionalProperties") is False:
        return {k: v for k, v in branch.items() if k != "additionalProperties"}
    return branch


def crd_to_jsonschema(node: Any, path: tuple[str, ...] = (), cel: list | None = None) -> Any:
    """An apiextensions openAPIV3Schema as a strict JSON Schema, as kubeconform does it:
    `nullable` becomes a null type, int-or-string both types, and an object with declared
    properties admits no other (unless x-kubernetes-preserve-unknown-fields). Paths carrying
    CEL rules (x-kubernetes-validations) are collected in `cel`: they cannot be evaluated here."""
    if isinstance(node, list):
        return [crd_to_jsonschema(v, path, cel) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: crd_to_jsonschema(sub, path + (name,), cel) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = crd_to_jsonschema(value, path + ("*",), cel)
        elif key in ("allOf", "anyOf", "oneOf"):
            # A branch's `properties` only say which fields it needs (structural schemas declare the
            # fields outside): the branch admits the others, as the API server does.
            out[key] = [_open(crd_to_jsonschema(v, path, cel)) for v in value]
        elif key == "x-kubernetes-validations":
            if cel is not None:
                cel.append((path, value))
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        elif key == "pattern" and isinstance(value, str):
            fixed = _python_pattern(value)
            if fixed is not None:
                out[key] = fixed
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out and "oneOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    if "properties" in out and "additionalProperties" not in out and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@dataclass
class CrdSchema:
    api_version: str
    kind: str
    validator: jsonschema.Draft202012Validator
    cel_paths: list[tuple[tuple[str, ...], list]]
    source: str


@functools.lru_cache(maxsize=None)
def crd_schemas() -> dict[tuple[str, str], CrdSchema]:
    out = {}
    for path in sorted((VENDOR / "crds").glob("*.json")):
        doc = json.loads(path.read_text())
        cel: list = []
        schema = crd_to_jsonschema(doc["openAPIV3Schema"], (), cel)
        # metadata is checked against the Kubernetes ObjectMeta schema separately.
        props = schema.setdefault("properties", {})
        props["metadata"] = {"type": "object"}
        # The API server admits these at the root of every custom resource.
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        api_version = f"{doc['group']}/{doc['version']}"
        out[(api_version, doc["kind"])] = CrdSchema(api_version, doc["kind"], jsonschema.Draft202012Validator(schema),
                                                    cel, doc["source"])
    return out


# The CEL rules (x-kubernetes-validations) of the vendored CRDs that the manifests meet, each written
# again in Python, word for word; a rule not listed here still fails the check when its field is set.
# `has(self.x)` is "x is set"; a rule with `oldSelf` is a transition rule: it constrains an update, and
# these manifests are what an apply creates, so it holds (the operators' own webhooks see updates).
def _set(value: Any, key: str) -> bool:
    return isinstance(value, dict) and key in value


def _empty(value: Any, key: str) -> bool:
    return not _set(value, key) or len(value[key]) == 0


CEL_RULES: dict[str, Any] = {
    "self.type != 'jmxPrometheusExporter' || has(self.valueFrom)":
        lambda v: v.get("type") != "jmxPrometheusExporter" or _set(v, "valueFrom"),
    "self.type != 'strimziMetricsReporter'": lambda v: v.get("type") != "strimziMetricsReporter",
    "!(has(self.imageCatalogRef) && has(self.imageName))":
        lambda v: not (_set(v, "imageCatalogRef") and _set(v, "imageName")),
    "!(has(self.image) && has(self.imageCatalogRef))": lambda v: not (_set(v, "image") and _set(v, "imageCatalogRef")),
    "!has(self.builtinLocale) || self.localeProvider == 'builtin'":
        lambda v: not _set(v, "builtinLocale") or v.get("localeProvider") == "builtin",
    "!has(self.icuLocale) || self.localeProvider == 'icu'":
        lambda v: not _set(v, "icuLocale") or v.get("localeProvider") == "icu",
    "!has(self.icuRules) || self.localeProvider == 'icu'":
        lambda v: not _set(v, "icuRules") or v.get("localeProvider") == "icu",
    "self.dataDurability!='preferred' || ((!has(self.standbyNamesPre) || self.standbyNamesPre.size()==0) && "
    "(!has(self.standbyNamesPost) || self.standbyNamesPost.size()==0))":
        lambda v: v.get("dataDurability") != "preferred" or (_empty(v, "standbyNamesPre")
                                                            and _empty(v, "standbyNamesPost")),
    # Strimzi 1.1+ KafkaUser authentication: certificate validity/renewal days only for `tls`, both or neither.
    "self.type == 'tls' || (!has(self.validityDays) && !has(self.renewalDays))":
        lambda v: v.get("type") == "tls" or (not _set(v, "validityDays") and not _set(v, "renewalDays")),
    "self.type != 'tls' || (has(self.renewalDays) == has(self.validityDays))":
        lambda v: v.get("type") != "tls" or _set(v, "renewalDays") == _set(v, "validityDays"),
    "self.type != 'tls' || !has(self.renewalDays) || !has(self.validityDays) || self.renewalDays < self.validityDays":
        lambda v: (v.get("type") != "tls" or not _set(v, "renewalDays") or not _set(v, "validityDays")
                   or v["renewalDays"] < v["validityDays"]),
    # Strimzi 1.x rack awareness: a topology label needs its key, an environment variable its name (a field
    # that is absent fails the rule, as CEL's missing-field error does).
    '(has(self.type) && self.type != "topology-label") || self.topologyKey != ""':
        lambda v: (_set(v, "type") and v["type"] != "topology-label") or v.get("topologyKey", "") != "",
    'has(self.type) == false || self.type != "environment-variable" || self.envVarName != ""':
        lambda v: not _set(v, "type") or v["type"] != "environment-variable" or v.get("envVarName", "") != "",
    "self > 0": lambda v: v > 0,
    "!has(self.serverName)": lambda v: not _set(v, "serverName"),
}


def cel_errors(value: Any, rules: list[dict]) -> list[str]:
    """The rules `value` breaks, and the rules this check cannot evaluate."""
    errors = []
    for rule in rules:
        text = rule["rule"]
        if "oldSelf" in text:
            continue
        check = CEL_RULES.get(text)
        if check is None:
            errors.append(f"CEL rule {text!r} cannot be evaluated here: check it by hand and add it to "
                          "CEL_RULES (tests/deploy/deploy_support.py)")
        elif not check(value):
            errors.append(f"breaks the CEL rule {text!r}: {rule.get('message', '')}")
    return errors


def _values_at(obj: Any, path: tuple[str, ...]) -> list[Any]:
    if not path:
        return [obj]
    head, rest = path[0], path[1:]
    if head == "*":
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
        return [found for v in values for found in _values_at(v, rest)]
    return _values_at(obj[head], rest) if isinstance(obj, dict) and head in obj else []


@functools.lru_cache(maxsize=None)
def _object_meta_validator(version: str):
    registry, _ = _k8s_registry(version)
    schema = _inline_refs({"$ref": "_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
                          _k8s_definitions(version), {}, set())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validation_errors(obj: dict, version: str) -> list[str]:
    """Why `obj` is not valid for Kubernetes `version` (empty list: valid)."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    name = (obj.get("metadata") or {}).get("name", "?")
    label = f"{kind}/{name} ({api_version})"
    validator = k8s_validator(version, api_version, kind)
    crd = crd_schemas().get((api_version, kind))
    if validator is None and crd is None:
        raise SchemaMissing(f"{label}: no schema, neither Kubernetes {version} nor vendored under "
                            f"vendor/schemas/crds/")
    errors = []
    if validator is not None:
        errors += [f"{label}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    else:
        errors += [f"{label}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                   for e in crd.validator.iter_errors(obj)]
        errors += [f"{label}: metadata/{'/'.join(map(str, e.absolute_path))}: {e.message}"
                   for e in _object_meta_validator(version).iter_errors(obj.get("metadata") or {})]
        for path, rules in crd.cel_paths:
            for value in _values_at(obj, path):
                errors += [f"{label}: {'/'.join(path)}: {why}" for why in cel_errors(value, rules)]
    if not (obj.get("metadata") or {}).get("name"):
        errors.append(f"{label}: metadata.name missing")
    return errors
