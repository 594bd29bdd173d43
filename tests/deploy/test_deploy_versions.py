"""Every third-party version is the one deploy/versions.yaml names (issue 19, "Reproducible images").

Each image a Dockerfile stage starts FROM, each `image:` of docker-compose.yml and each image of
the rendered Kubernetes objects (containers, CloudNativePG `imageName`) is an image of the
versions file at its exact tag (never `latest`, never a bare major), with its digest when one is
recorded; the Kafka version is the same in the local runner, Compose and Strimzi (Kafka and
MirrorMaker 2); the vendored CRD schemas are those of the operators named there; every recorded
digest is well-formed. The digests not recorded yet are listed in a warning (pytest's summary):
they cannot be resolved from the build machine (no container registry is reachable),
deploy/tools/pin_images.py resolves them where one is.
"""
from __future__ import annotations

import json
import re
import warnings

import pytest

import deploy_support as ds
import pin_images

VERSIONS = ds.ROOT / "deploy" / "versions.yaml"
# Changai's own image: built from the Dockerfile, named by Compose's CHANGAI_IMAGE and the overlays'
# `images:` (its pin is the release the overlay deploys, not a third-party version).
OWN_IMAGE_NAMES = ("changai", "registry.example.org/changai/changai")
EXACT_TAG = re.compile(r"v?\d+\.\d+(\.\d+)?([-.][\w.-]+)?")


def versions() -> dict:
    return pin_images.load(VERSIONS)


def third_party() -> list[pin_images.Image]:
    return pin_images.images(versions())


def reference_problem(reference: str, known: list[pin_images.Image]) -> str | None:
    """Why `reference` (as written in a manifest) is not an image of the versions file, or None."""
    name, _, digest = reference.partition("@")
    image, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    if not tag:
        return f"{reference}: no tag (the registry's `latest`)"
    if not EXACT_TAG.fullmatch(tag) or tag == "latest":
        return f"{reference}: {tag!r} is not an exact version tag"
    if digest and not pin_images.DIGEST.fullmatch(digest):
        return f"{reference}: malformed digest {digest!r}"
    for entry in known:
        if entry.image == image:
            if reference != entry.reference:
                return f"{reference}: deploy/versions.yaml says {entry.reference}"
            return None
    return f"{reference}: {image} is not in deploy/versions.yaml"


def own_image(reference: str) -> bool:
    return reference.split("@")[0].rsplit(":", 1)[0] in OWN_IMAGE_NAMES


# --------------------------------------------------------------------------- the versions file

def test_deploy_versions_file_names_exact_versions_and_well_formed_digests():
    data = versions()
    known = third_party()  # raises on a malformed digest
    assert {i.name for i in known} >= {"python", "kafka", "postgres", "cnpg-postgresql", "prometheus", "grafana"}
    for entry in known:
        assert EXACT_TAG.fullmatch(entry.tag) and entry.tag != "latest", f"{entry.name}: {entry.tag}"
        assert entry.files, f"{entry.name}: lists no file that uses it"
        for name in entry.files:
            assert (ds.ROOT / name).is_file(), f"{entry.name}: {name} does not exist"
    kafka = str(data["kafka"]["version"])
    assert re.fullmatch(r"4\.\d+\.\d+", kafka), f"Kafka {kafka}: the platform runs Kafka 4.x (KRaft)"
    assert str(data["kafka"]["metadata_version"]).startswith(kafka.rsplit(".", 1)[0] + "-IV"), \
        "the KRaft metadata version is the Kafka release's"
    by_name = {i.name: i for i in known}
    assert by_name["kafka"].tag == kafka
    minor = str(data["postgresql"]["minor"])
    assert minor.split(".")[0] == str(data["postgresql"]["major"])
    assert by_name["postgres"].tag.startswith(minor + "-"), "Compose runs the PostgreSQL minor of the file"
    assert by_name["cnpg-postgresql"].tag.startswith(minor + "-"), "CloudNativePG runs the PostgreSQL minor of the file"
    missing = pin_images.missing_digests(known)
    if missing:
        warnings.warn("no digest recorded for " + ", ".join(missing) + ": not resolvable from the build machine; "
                      "run deploy/tools/pin_images.py where the registry is reachable", stacklevel=1)


def test_deploy_versions_reference_check_can_fail():
    known = third_party()
    postgres = next(i for i in known if i.name == "postgres")
    assert reference_problem(postgres.reference, known) is None
    for bad in ("postgres:latest", "postgres", "postgres:15", "postgres:15-bookworm", "postgres:15.2-bookworm",
                "redis:7.4.1", f"{postgres.image}:{postgres.tag}@sha256:abc"):
        assert reference_problem(bad, known), bad
    with pytest.raises(pin_images.PinError):
        pin_images.images({"images": {"x": {"image": "x", "tag": "1.0.0", "digest": "sha256:XYZ", "files": []}}})


def test_deploy_versions_files_are_written_from_the_versions_file():
    stale = pin_images.write_files(third_party(), ds.ROOT, check=True)
    assert not stale, f"{stale} differ from deploy/versions.yaml: run deploy/tools/pin_images.py --write"


# --------------------------------------------------------------------------- where the images are used

def test_deploy_versions_dockerfile_bases():
    text = re.sub(r"\\\n", " ", (ds.ROOT / "Dockerfile").read_text())
    args = dict(re.findall(r"^\s*ARG\s+(\w+)=(\S+)", text, re.M))
    stages, bases = set(), []
    for base, alias in re.findall(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I):
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
        if base not in stages:
            bases.append(base)
        if alias:
            stages.add(alias)
    assert bases
    known = third_party()
    problems = [p for p in (reference_problem(b, known) for b in bases) if p]
    assert not problems, problems


def test_deploy_versions_compose_images():
    known = third_party()
    seen, problems = set(), []
    for name, service in ds.compose()["services"].items():
        reference = service.get("image")
        if reference is None or own_image(reference):
            assert reference is not None or "build" in service, f"compose service {name}: no image"
            continue
        problem = reference_problem(reference, known)
        if problem:
            problems.append(f"{name}: {problem}")
        seen.add(reference.split("@")[0].rsplit(":", 1)[0])
    assert not problems, problems
    listed = {i.image for i in known if "docker-compose.yml" in i.files}
    assert seen == listed, f"Compose uses {sorted(seen)}, versions.yaml lists {sorted(listed)} for it"


def _pod_images(obj: dict) -> list[str]:
    spec = obj.get("spec") or {}
    template = (spec.get("jobTemplate", {}).get("spec", {}).get("template") if obj["kind"] == "CronJob"
                else spec.get("template"))
    pod = (template or {}).get("spec") or (spec if obj["kind"] == "Pod" else {})
    out = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        out += [c["image"] for c in pod.get(key) or [] if "image" in c]
    return out


def _images_in(obj: dict) -> list[str]:
    """The images an object names: its pods' containers; CloudNativePG's imageName; Strimzi's `image`
    overrides (none expected: the operator picks the images of spec.kafka.version)."""
    found = _pod_images(obj)
    spec = obj.get("spec") or {}
    if obj.get("apiVersion", "").startswith("postgresql.cnpg.io/") and "imageName" in spec:
        found.append(spec["imageName"])
    if obj.get("apiVersion", "").startswith("kafka.strimzi.io/"):
        for section in (spec, spec.get("kafka") or {}):
            if isinstance(section.get("image"), str):
                found.append(section["image"])
    return found


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_deploy_versions_kubernetes_images(overlay):
    known = third_party()
    objects = ds.overlay_objects(overlay)
    problems, seen = [], set()
    for obj in objects:
        for reference in _images_in(obj):
            if own_image(reference):
                continue
            problem = reference_problem(reference, known)
            if problem:
                problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {problem}")
            seen.add(reference)
    assert not problems, problems
    clusters = ds.find(objects, "Cluster")
    assert clusters and all("imageName" in c["spec"] for c in clusters), \
        "every CloudNativePG Cluster names its image (otherwise the operator's default, whatever it is)"
    cnpg = next(i for i in known if i.name == "cnpg-postgresql")
    assert seen == {cnpg.reference}, seen


# --------------------------------------------------------------------------- Kafka, operators

@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_deploy_versions_one_kafka_everywhere(overlay):
    import stack

    data = versions()
    kafka, metadata = str(data["kafka"]["version"]), str(data["kafka"]["metadata_version"])
    assert kafka == stack.KAFKA_VERSION, "deploy/local/stack.py KAFKA_VERSION"
    pom = (ds.ROOT / "deploy" / "local" / "kafka" / "pom.xml").read_text()
    pinned = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert pinned and pinned.group(1) == kafka, "deploy/local/kafka/pom.xml"
    compose_kafka = ds.compose()["services"]["kafka"]["image"].split("@")[0]
    assert compose_kafka.rsplit(":", 1)[1] == kafka, f"Compose runs {compose_kafka}"
    objects = ds.overlay_objects(overlay)
    cluster = ds.one(objects, "Kafka", "changai")["spec"]["kafka"]
    assert str(cluster.get("version")) == kafka, "Strimzi Kafka spec.kafka.version"
    assert str(cluster.get("metadataVersion")) == metadata, "Strimzi Kafka spec.kafka.metadataVersion"
    for mirror in ds.find(objects, "KafkaMirrorMaker2"):
        assert str(mirror["spec"].get("version")) == kafka, f"KafkaMirrorMaker2/{mirror['metadata']['name']}"


def test_deploy_versions_operators_match_the_vendored_schemas_and_docs():
    operators = {k: str(v) for k, v in versions()["operators"].items()}
    pins = json.loads((ds.VENDOR / "sources.json").read_text())["pins"]
    assert pins["strimzi"] == operators["strimzi"]
    assert pins["cloudnative-pg"] == f"v{operators['cloudnative_pg']}"
    assert pins["plugin-barman-cloud"] == f"v{operators['barman_cloud_plugin']}"
    assert pins["prometheus-operator"] == f"v{operators['prometheus_operator']}"
    docs = (ds.ROOT / "docs" / "deployment.md").read_text()
    assert f"strimzi-kafka-operator --version {operators['strimzi']}" in docs, "the Helm command installs the pin"
    assert "deploy/versions.yaml" in docs and "deploy/tools/pin_images.py" in docs
