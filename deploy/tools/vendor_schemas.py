"""Re-create the pinned JSON schemas under vendor/schemas/ from package registries.

    .venv/bin/python deploy/tools/vendor_schemas.py          # rewrite vendor/schemas/*
    .venv/bin/python deploy/tools/vendor_schemas.py --check  # rebuild in a temp dir, compare

The deployment checks (tests/deploy/) read only the committed files: offline at test
time. This script is for the maintainer who moves a pin; it needs the network (the
package registries), Maven + Java, Go and Cargo, and takes a few minutes (most of it
compiling the CloudNativePG crate once).

Where each schema comes from (every source is a registry package, pinned below):

* Strimzi ``Kafka``, ``KafkaNodePool``, ``KafkaTopic``, ``KafkaUser``, ``KafkaMirrorMaker2``
  (API ``kafka.strimzi.io/v1``): up to 0.51 the CRDs Strimzi's own generator wrote into the test
  jar of ``io.strimzi:api`` (Maven Central, classifier ``tests``, folder ``crds/v1/``); from 1.x on
  that jar carries none, so they come from the release's ``install/cluster-operator/`` folder
  (``--strimzi-source DIR``: the release archive unpacked, or a checkout of the release tag).
* Prometheus Operator ``ServiceMonitor``, ``PodMonitor``, ``PrometheusRule`` (``monitoring.coreos.com/v1``):
  the CRD files shipped in the Go module ``github.com/prometheus-operator/prometheus-operator``
  (``example/prometheus-operator-crd/``), fetched with ``go mod download``.
* CloudNativePG ``Cluster``, ``Pooler``, ``ScheduledBackup`` (``postgresql.cnpg.io/v1``): the
  upstream CRDs (``config/crd/bases/``) of the Go module ``github.com/cloudnative-pg/cloudnative-pg``,
  fetched with ``go mod download`` (numeric bounds and CEL rules included).
* The Barman Cloud plugin's ``ObjectStore`` (``barmancloud.cnpg.io/v1``): the CRD of the Go module
  ``github.com/cloudnative-pg/plugin-barman-cloud`` (``config/crd/bases/``).
* Compose Specification: ``compose-spec.json`` as vendored in the PyPI package
  ``check-jsonschema``.

Descriptions are dropped from the CRD schemas (they are most of the bytes and validate
nothing); everything else is kept as published.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "vendor" / "schemas"

# The operators' versions come from deploy/versions.yaml (the one source of third-party versions).
OPERATORS = yaml.safe_load((ROOT / "deploy" / "versions.yaml").read_text())["operators"]
STRIMZI_VERSION = str(OPERATORS["strimzi"])
PROMETHEUS_OPERATOR_VERSION = f"v{OPERATORS['prometheus_operator']}"
CNPG_VERSION = f"v{OPERATORS['cloudnative_pg']}"
BARMAN_CLOUD_PLUGIN_VERSION = f"v{OPERATORS['barman_cloud_plugin']}"
CHECK_JSONSCHEMA_VERSION = "0.39.0"

STRIMZI_CRDS = {"Kafka": "040-Crd-kafka.yaml", "KafkaTopic": "043-Crd-kafkatopic.yaml",
                "KafkaNodePool": "045-Crd-kafkanodepool.yaml", "KafkaUser": "044-Crd-kafkauser.yaml",
                "KafkaMirrorMaker2": "048-Crd-kafkamirrormaker2.yaml"}
PROMETHEUS_OPERATOR_CRDS = {"ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
                            "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
                            "PodMonitor": "monitoring.coreos.com_podmonitors.yaml"}
CNPG_CRDS = {"Cluster": "postgresql.cnpg.io_clusters.yaml", "Pooler": "postgresql.cnpg.io_poolers.yaml",
             "ScheduledBackup": "postgresql.cnpg.io_scheduledbackups.yaml"}
BARMAN_CLOUD_CRDS = {"ObjectStore": "barmancloud.cnpg.io_objectstores.yaml"}


def run(argv: list[str], cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, cwd=cwd, check=True, **kw)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def strip_descriptions(node):
    """Drop `description` annotations, keeping any property that happens to be called so."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
            elif key == "description" and isinstance(value, str):
                continue
            else:
                out[key] = strip_descriptions(value)
        return out
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def crd_entries(crd: dict, source: str) -> list[tuple[str, dict]]:
    """(file name, vendored document) for each served version of a CRD."""
    spec = crd["spec"]
    entries = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        doc = {
            "group": spec["group"], "kind": spec["names"]["kind"], "version": version["name"],
            "scope": spec.get("scope", "Namespaced"), "source": source,
            "openAPIV3Schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
        }
        entries.append((f"crds/{spec['group']}_{spec['names']['plural']}_{version['name']}.json", doc))
    return entries


STRIMZI_SOURCE: Path | None = None  # --strimzi-source: the release's install/cluster-operator/ folder


def strimzi(work: Path) -> tuple[list, dict]:
    """Strimzi's CRDs: from the test jar of io.strimzi:api (up to 0.51 it carried crds/v1/), or, from
    1.x on (the jars carry no CRDs any more), from the release's `install/cluster-operator/` folder
    given with --strimzi-source (the release archive unpacked, or a checkout of the release tag)."""
    coords = f"io.strimzi:api:{STRIMZI_VERSION}:jar:tests"
    if STRIMZI_SOURCE is None:
        run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={coords}", f"-DoutputDirectory={work}"], cwd=work)
        jar = work / f"api-{STRIMZI_VERSION}-tests.jar"
        data = jar.read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = set(z.namelist())
            if not all(f"crds/v1/{name}" in names for name in STRIMZI_CRDS.values()):
                raise SystemExit(f"{coords} carries no crds/v1/ (Strimzi 1.x): give --strimzi-source "
                                 f"<strimzi-{STRIMZI_VERSION}>/install/cluster-operator")
            entries = []
            for name in STRIMZI_CRDS.values():
                crd = yaml.safe_load(z.read(f"crds/v1/{name}"))
                entries += [e for e in crd_entries(crd, f"Maven Central {coords} crds/v1/{name}")
                            if e[1]["version"] == "v1"]
        return entries, {"artifact": f"Maven Central {coords}", "sha256": sha256(data)}
    entries, digests = [], {}
    for name in STRIMZI_CRDS.values():
        data = (STRIMZI_SOURCE / name).read_bytes()
        digests[name] = sha256(data)
        crd = yaml.safe_load(data)
        labels = crd["metadata"].get("labels") or {}
        if labels.get("app") != "strimzi":
            raise SystemExit(f"{STRIMZI_SOURCE / name} is not a Strimzi CRD")
        source = f"Strimzi {STRIMZI_VERSION} release, install/cluster-operator/{name}"
        entries += [e for e in crd_entries(crd, source) if e[1]["version"] == "v1"]
    return entries, {"artifact": f"Strimzi {STRIMZI_VERSION} release, install/cluster-operator/", "sha256": digests}


def go_module_crds(work: Path, module: str, folder: str, names: dict[str, str]) -> tuple[list, dict]:
    out = run(["go", "mod", "download", "-json", module], cwd=work, capture_output=True, text=True,
              env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on"})
    info = json.loads(out.stdout)
    base = Path(info["Dir"]) / folder
    entries = []
    for name in names.values():
        crd = yaml.safe_load((base / name).read_text())
        entries += crd_entries(crd, f"Go module {module} {folder}/{name}")
    return entries, {"artifact": f"Go module {module}", "sum": info.get("Sum")}


def prometheus_operator(work: Path) -> tuple[list, dict]:
    module = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    return go_module_crds(work, module, "example/prometheus-operator-crd", PROMETHEUS_OPERATOR_CRDS)


def cloudnative_pg(work: Path) -> tuple[list, dict]:
    module = f"github.com/cloudnative-pg/cloudnative-pg@{CNPG_VERSION}"
    return go_module_crds(work, module, "config/crd/bases", CNPG_CRDS)


def barman_cloud_plugin(work: Path) -> tuple[list, dict]:
    module = f"github.com/cloudnative-pg/plugin-barman-cloud@{BARMAN_CLOUD_PLUGIN_VERSION}"
    return go_module_crds(work, module, "config/crd/bases", BARMAN_CLOUD_CRDS)


def compose_spec(work: Path) -> tuple[list, dict]:
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"check-jsonschema=={CHECK_JSONSCHEMA_VERSION}",
         "-d", str(work)])
    wheel = next(work.glob("check_jsonschema-*.whl"))
    data = wheel.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        schema = json.loads(z.read("check_jsonschema/builtin_schemas/vendor/compose-spec.json"))
    return [("compose-spec.json", schema)], {"artifact": f"PyPI check-jsonschema {CHECK_JSONSCHEMA_VERSION} "
                                                          "check_jsonschema/builtin_schemas/vendor/compose-spec.json",
                                             "sha256": sha256(data)}


def render(work: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    sources = {}
    for name, step in (("strimzi", strimzi), ("prometheus-operator", prometheus_operator),
                       ("cloudnative-pg", cloudnative_pg), ("barman-cloud-plugin", barman_cloud_plugin),
                       ("compose-spec", compose_spec)):
        sub = work / name
        sub.mkdir()
        entries, provenance = step(sub)
        sources[name] = {**provenance, "files": [path for path, _ in entries]}
        for path, doc in entries:
            files[path] = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    files["sources.json"] = json.dumps({
        "pins": {"strimzi": STRIMZI_VERSION, "prometheus-operator": PROMETHEUS_OPERATOR_VERSION,
                 "cloudnative-pg": CNPG_VERSION, "plugin-barman-cloud": BARMAN_CLOUD_PLUGIN_VERSION,
                 "check-jsonschema": CHECK_JSONSCHEMA_VERSION},
        "sources": sources,
        "generated_by": "deploy/tools/vendor_schemas.py",
    }, indent=2, sort_keys=True) + "\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    parser.add_argument("--strimzi-source", type=Path, metavar="DIR",
                        help="Strimzi's install/cluster-operator/ of the pinned release (Strimzi 1.x)")
    args = parser.parse_args()
    global STRIMZI_SOURCE
    STRIMZI_SOURCE = args.strimzi_source
    with tempfile.TemporaryDirectory(prefix="changai-vendor-") as tmp:
        files = render(Path(tmp))
    if args.check:
        stale = [p for p, text in files.items() if not (OUT / p).is_file() or (OUT / p).read_text() != text]
        print("vendor/schemas up to date" if not stale else "differs: " + ", ".join(stale))
        return 1 if stale else 0
    if (OUT / "crds").is_dir():
        shutil.rmtree(OUT / "crds")
    for path, text in files.items():
        (OUT / path).parent.mkdir(parents=True, exist_ok=True)
        (OUT / path).write_text(text)
    print(f"wrote {len(files)} files under {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
