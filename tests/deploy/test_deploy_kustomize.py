"""Kubernetes: every overlay builds (pinned kustomize and `kubectl kustomize`), and every
object it yields validates against the pinned Kubernetes schemas and the vendored CRD
schemas of Strimzi, CloudNativePG and the Prometheus Operator."""
from __future__ import annotations

import copy
import json
import shutil
from collections import Counter

import pytest
import yaml

import deploy_support as ds

TARGETS = ("base", *(f"overlays/{o}" for o in ds.OVERLAYS))


def _identity(obj: dict) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")


@pytest.mark.parametrize("target", TARGETS)
def test_deploy_kustomize_builds(target):
    objects = ds.build(target)
    assert len(objects) > 50, f"{target}: only {len(objects)} objects"
    dupes = [k for k, n in Counter(map(_identity, objects)).items() if n > 1]
    assert not dupes, f"{target}: objects defined twice: {dupes}"
    if target.startswith("overlays/"):
        namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
        assert len(namespaces) == 1 and None not in namespaces, f"{target}: namespaces {namespaces}"
        assert ds.find(objects, "Namespace"), f"{target}: no Namespace object"


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_deploy_kubectl_kustomize_builds_the_same_objects(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the pinned kustomize build is checked by test_deploy_kustomize_builds)")
    objects = ds.parse_docs(ds.run_build([kubectl, "kustomize", str(ds.K8S / "overlays" / overlay)]))
    canonical = lambda objs: sorted(json.dumps(o, sort_keys=True) for o in objs)  # noqa: E731
    assert canonical(objects) == canonical(ds.overlay_objects(overlay)), \
        f"kubectl kustomize and kustomize {ds.kustomize_binary()[0]} disagree on overlays/{overlay}"


@pytest.mark.parametrize("version", ds.KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_deploy_objects_validate_against_schemas(target, version):
    errors = []
    for obj in ds.build(target):
        errors += ds.validation_errors(obj, version)
    assert not errors, "\n".join(errors)


def test_deploy_example_secret_validates():
    docs = ds.parse_docs((ds.K8S / "examples" / "changai-secrets.example.yaml").read_text())
    assert [d["kind"] for d in docs] == ["Secret"]
    for version in ds.KUBERNETES_VERSIONS:
        assert not ds.validation_errors(docs[0], version)
    # The example names every key the manifests read from changai-secrets.
    wanted = set()
    for overlay in ds.OVERLAYS:
        for dep in ds.find(ds.overlay_objects(overlay), "Deployment"):
            for env in dep["spec"]["template"]["spec"]["containers"][0].get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"].startswith("changai-secrets"):
                    wanted.add(ref["key"])
    assert wanted <= set(docs[0]["stringData"]), f"keys missing from the example: {wanted - set(docs[0]['stringData'])}"


def test_deploy_every_vendored_schema_is_accounted_for():
    sources = json.loads((ds.VENDOR / "sources.json").read_text())
    listed = {f for s in sources["sources"].values() for f in s["files"]}
    present = {str(p.relative_to(ds.VENDOR)) for p in ds.VENDOR.rglob("*.json") if p.name != "sources.json"}
    assert listed == present, "vendor/schemas/sources.json and the files disagree"
    kinds = {k for _, k in ds.crd_schemas()}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "KafkaMirrorMaker2", "Cluster", "Pooler",
            "ScheduledBackup", "ObjectStore", "ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds


# The checks above must be able to fail: each broken object below is rejected.
def _broken_variants():
    objects = ds.overlay_objects("prod")

    def variant(kind, name, mutate, why):
        obj = copy.deepcopy(ds.one(objects, kind, name) if name else ds.find(objects, kind)[0])
        mutate(obj)
        return pytest.param(obj, id=why)

    container = lambda o: o["spec"]["template"]["spec"]["containers"][0]  # noqa: E731
    return [
        variant("Deployment", "membership", lambda o: container(o).update(livenessprobe={}), "deployment-unknown-field"),
        variant("Deployment", "membership", lambda o: container(o)["ports"][0].update(containerPort="8001x"),
                "deployment-wrong-type"),
        variant("HorizontalPodAutoscaler", "membership", lambda o: o["spec"].pop("maxReplicas"), "hpa-missing-required"),
        variant("KafkaTopic", None, lambda o: o["spec"].update(partitions="six"), "kafkatopic-wrong-type"),
        variant("KafkaTopic", None, lambda o: o["spec"].update(partition=6), "kafkatopic-unknown-field"),
        variant("Kafka", "changai", lambda o: o["spec"]["kafka"]["listeners"][0].pop("tls"), "kafka-missing-required"),
        variant("KafkaNodePool", "dual-role", lambda o: o["spec"].update(roles=["leader"]), "nodepool-bad-enum"),
        variant("Cluster", "pg-membership", lambda o: o["spec"].update(instance=3), "cnpg-unknown-field"),
        variant("Cluster", "pg-membership", lambda o: o["spec"].update(primaryUpdateStrategy="sometimes"),
                "cnpg-bad-enum"),
        variant("ServiceMonitor", "membership", lambda o: o["spec"]["endpoints"][0].update(port=8001),
                "servicemonitor-wrong-type"),
        variant("Kafka", "changai", lambda o: o["spec"]["kafka"].update(
            metricsConfig={"type": "jmxPrometheusExporter"}), "kafka-field-with-cel-rules"),
        variant("Deployment", "membership", lambda o: o["metadata"].update(labels={"a": 1}), "metadata-wrong-type"),
        variant("KafkaUser", "membership", lambda o: o["spec"]["authorization"]["acls"][0]["resource"].update(
            type="topics"), "kafkauser-bad-resource-type"),
        variant("ScheduledBackup", "pg-notifier-nightly", lambda o: o["spec"].pop("cluster"), "backup-missing-cluster"),
        variant("Cluster", "pg-notifier", lambda o: o["spec"]["postgresql"]["synchronous"].update(number=0),
                "cnpg-breaks-cel-rule"),
        variant("Cluster", "pg-notifier", lambda o: o["spec"]["postgresql"]["synchronous"].update(
            dataDurability="preferred", standbyNamesPre=["a"]), "cnpg-breaks-cel-rule-of-an-object"),
        variant("KafkaMirrorMaker2", "changai-dr", lambda o: o["spec"].pop("target"), "mirrormaker-missing-target"),
    ]


@pytest.mark.parametrize("obj", _broken_variants())
def test_deploy_validation_rejects_broken_objects(obj):
    assert ds.validation_errors(obj, ds.KUBERNETES_VERSIONS[0]), yaml.safe_dump(obj)[:2000]


def test_deploy_validation_rejects_unknown_kinds():
    with pytest.raises(ds.SchemaMissing):
        ds.validation_errors({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}}, "1.31")
