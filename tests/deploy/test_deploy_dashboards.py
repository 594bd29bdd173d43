"""The Grafana dashboards and Prometheus rules provisioned by docker-compose.yml and by the
Kubernetes overlays are exactly the generated ones (deploy/grafana/dashboards/*.json,
deploy/prometheus/*.rules.yml)."""
from __future__ import annotations

import json
from pathlib import PurePosixPath

import pytest
import yaml

import deploy_support as ds


def _dashboards() -> dict[str, bytes]:
    files = sorted(ds.DASHBOARDS_DIR.glob("*.json")) if ds.DASHBOARDS_DIR.is_dir() else []
    if not files:
        pytest.skip("no generated dashboards yet (deploy/grafana/dashboards/*.json): nothing to provision")
    return {p.name: p.read_bytes() for p in files}


def _rule_files() -> dict[str, dict]:
    files = sorted(ds.RULES_DIR.glob("*.rules.yml")) if ds.RULES_DIR.is_dir() else []
    if not files:
        pytest.skip("no generated rule files yet (deploy/prometheus/*.rules.yml): nothing to provision")
    return {p.name: yaml.safe_load(p.read_text()) for p in files}


def _bind_mounts(service: dict) -> dict[str, str]:
    """container path -> repository path (relative, normalised) of a compose service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2] if isinstance(volume, str) else (volume["source"], volume["target"])
        if source.startswith((".", "/")):
            mounts[target] = str(PurePosixPath(source).as_posix()).removeprefix("./").rstrip("/")
    return mounts


def test_deploy_compose_grafana_provisions_the_generated_dashboards():
    dashboards = _dashboards()
    grafana = ds.compose()["services"]["grafana"]
    mounts = _bind_mounts(grafana)
    provisioning_dir = ds.ROOT / mounts["/etc/grafana/provisioning"]
    providers = [p for f in sorted((provisioning_dir / "dashboards").glob("*.yml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    paths = {p["options"]["path"].rstrip("/") for p in providers}
    mounted = {target: ds.ROOT / source for target, source in mounts.items() if target in paths}
    assert len(mounted) == 1, f"dashboard provider paths {paths} vs mounts {mounts}"
    (folder,) = mounted.values()
    assert folder == ds.DASHBOARDS_DIR, f"Grafana reads {folder}, the dashboards are generated into {ds.DASHBOARDS_DIR}"
    assert {p.name: p.read_bytes() for p in folder.glob("*.json")} == dashboards
    # Every datasource the dashboards name exists (or is a dashboard variable).
    datasources = [d for f in sorted((provisioning_dir / "datasources").glob("*.yml"))
                   for d in yaml.safe_load(f.read_text())["datasources"]]
    uids = {d["uid"] for d in datasources}
    for name, raw in dashboards.items():
        found = set()

        def walk(node):
            if isinstance(node, dict):
                ds_ref = node.get("datasource")
                if isinstance(ds_ref, dict) and isinstance(ds_ref.get("uid"), str):
                    found.add(ds_ref["uid"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(json.loads(raw))
        unknown = {u for u in found if not u.startswith("$") and u not in uids}
        assert not unknown, f"{name}: datasources {unknown} are not provisioned ({uids})"


def test_deploy_compose_prometheus_loads_the_generated_rules():
    rules = _rule_files()
    prometheus = ds.compose()["services"]["prometheus"]
    mounts = _bind_mounts(prometheus)
    config = yaml.safe_load((ds.ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    loaded = set()
    for pattern in config["rule_files"]:
        directory, glob = pattern.rsplit("/", 1)
        assert directory in mounts, f"rule_files {pattern}: {directory} is not mounted"
        loaded |= {p.name for p in (ds.ROOT / mounts[directory]).glob(glob)}
    assert loaded == set(rules)


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_deploy_k8s_dashboards_are_the_generated_ones(overlay):
    dashboards = _dashboards()
    configmaps = [o for o in ds.find(ds.overlay_objects(overlay), "ConfigMap")
                  if (o["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    provisioned = {key: value.encode() for cm in configmaps for key, value in cm["data"].items()}
    assert provisioned == dashboards


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_deploy_k8s_prometheus_rules_are_the_generated_ones(overlay):
    rules = {f"deploy/prometheus/{name}": doc for name, doc in _rule_files().items()}
    # and the Kubernetes-only ones (the operators' targets), which Compose does not load
    for path in sorted((ds.RULES_DIR / "kubernetes").glob("*.rules.yml")):
        rules[str(path.relative_to(ds.ROOT))] = yaml.safe_load(path.read_text(encoding="utf-8"))
    objects = ds.find(ds.overlay_objects(overlay), "PrometheusRule")
    by_source = {o["metadata"]["annotations"]["changai.io/source"]: o["spec"]["groups"] for o in objects}
    assert by_source == {name: doc["groups"] for name, doc in rules.items()}
