"""Static checks of what would break or mislead on a real cluster (issue 19): each test names its item."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deploy_support as ds

ROOT = ds.ROOT
APP_DIRS = ("services", "shared")


def _app_sources():
    for top in APP_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _calls(node: ast.AST):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            yield sub, func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


# ------------------------------------------------------------------ item 1: who creates topics

def test_no_application_code_creates_a_topic_where_the_operator_owns_them():
    """Every call that creates a Kafka topic (admin create_topics, NewTopic, Faust's create_topic) sits in
    a function that asks shared.topics.apps_create_topics first, which is false in kubernetes/production."""
    offenders = []
    for path, tree in _app_sources():
        for fn in _functions(tree):
            names = {name for _, name in _calls(fn)}
            creates = names & {"create_topics", "create_topic", "NewTopic"}
            if creates and "apps_create_topics" not in names:
                offenders.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} calls {sorted(creates)}")
    assert not offenders, "topic creation not guarded by shared.topics.apps_create_topics:\n" + "\n".join(offenders)


def test_every_faust_app_declares_topics_only_where_the_applications_may():
    offenders = []
    for path, tree in _app_sources():
        for call, name in _calls(tree):
            if name == "App" and isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "faust":
                keywords = {k.arg for k in call.keywords}
                # create_stream_app passes its options as **options: the dict must carry the setting.
                if "topic_allow_declare" not in keywords and "apps_create_topics(" not in ast.unparse(
                        next(f for f in _functions(tree) if f.lineno <= call.lineno <= f.end_lineno)):
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not offenders, f"faust.App without topic_allow_declare=apps_create_topics(...): {offenders}"


def test_apps_create_topics_is_false_in_every_operator_environment():
    from shared.settings import Settings
    from shared.topics import OPERATOR_MANAGED_ENVIRONMENTS, apps_create_topics

    secrets = dict(jwt_secret="deploy-check-secret-of-its-own", data_key="ZGVwbG95LWNoZWNrLWRhdGEta2V5LTMyLWJ5dGVzISE=",
                   notifier_webhook_secret="whsec_ZGVwbG95LWNoZWNr")
    assert {"kubernetes", "production"} <= OPERATOR_MANAGED_ENVIRONMENTS
    for env in OPERATOR_MANAGED_ENVIRONMENTS:
        assert not apps_create_topics(Settings(environment=env, kafka_create_topics=True, **secrets))


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_kubernetes_services_never_create_topics(overlay):
    from shared.topics import OPERATOR_MANAGED_ENVIRONMENTS

    objects = ds.overlay_objects(overlay)
    common = next(o for o in ds.find(objects, "ConfigMap") if o["metadata"]["name"].startswith("changai-common"))
    data = common["data"]
    assert (data.get("CHANGAI_KAFKA_CREATE_TOPICS", "").lower() == "false"
            or data["CHANGAI_ENVIRONMENT"].lower() in OPERATOR_MANAGED_ENVIRONMENTS), (
        f"{overlay}: the services would create topics (CHANGAI_ENVIRONMENT={data.get('CHANGAI_ENVIRONMENT')})")
    assert float(data.get("CHANGAI_TOPIC_WAIT_S", "300")) > 0


def test_compose_creates_topics_with_the_configured_replication():
    compose = ds.compose()
    brokers = sum(1 for name in compose["services"] if name.startswith("kafka"))
    job = ds.compose_environment(compose["services"]["topics"])
    assert 1 <= int(job.get("CHANGAI_TOPIC_REPLICATION_FACTOR", "1")) <= brokers


# ------------------------------------------------------------------ items 2-4: metrics that mislead

def _expressions():
    """Every PromQL expression operators see: the rules and the dashboards' targets."""
    import json

    import yaml

    for path in sorted((ROOT / "deploy" / "prometheus").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name} {rule.get('alert') or rule.get('record')}", rule["expr"]
    for path in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        def walk(node):
            if isinstance(node, dict):
                if isinstance(node.get("expr"), str):
                    yield node["expr"]
                for value in node.values():
                    yield from walk(value)
            elif isinstance(node, list):
                for value in node:
                    yield from walk(value)
        for expr in walk(json.loads(path.read_text())):
            yield path.name, expr


def test_outbox_backlog_is_counted_once():
    """Every relay replica (and both notifier processes) reports the whole outbox table: summing over
    instances multiplies it. Every use takes the max per service."""
    import re

    wrong = []
    for where, expr in _expressions():
        for metric in ("changai_outbox_backlog", "changai_outbox_oldest_unpublished_age_seconds"):
            uses = len(re.findall(rf"{metric}\b", expr))
            maxed = len(re.findall(rf"max by \(service\) \((?:delta\()?{metric}\b", expr))
            if uses != maxed:
                wrong.append(f"{where}: {expr}")
    assert not wrong, "outbox gauges not taken as max by (service):\n" + "\n".join(wrong)


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_service_monitors_keep_the_applications_service_label(overlay):
    for monitor in ds.find(ds.overlay_objects(overlay), "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint.get("honorLabels") is True, (
                f"{monitor['metadata']['name']}: the target label `service` would overwrite the application's")


# ------------------------------------------------------------------ item 7: migrations before the rollout

@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_a_migrations_job_for_every_service_database(overlay):
    objects = ds.overlay_objects(overlay)
    common = next(o for o in ds.find(objects, "ConfigMap") if o["metadata"]["name"].startswith("changai-common"))
    assert common["data"].get("CHANGAI_MIGRATE_ON_START", "").lower() == "false", (
        f"{overlay}: the services would migrate in their own start-up, under the start-up probe")
    for db in ds.service_databases():
        job = ds.one(objects, "Job", f"migrate-{db}")
        pod = job["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["python", "-m", "shared.migrate", db]
        env = {e["name"]: e for e in container["env"]}
        assert env["CHANGAI_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": f"pg-{db}-app", "key": "uri"}
        assert float(env["CHANGAI_MIGRATE_LOCK_TIMEOUT_S"]["value"]) > 0
        assert pod["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
        labels = pod["metadata"]["labels"]
        admitted = [peer["podSelector"]["matchLabels"] for rule in ds.one(objects, "NetworkPolicy", f"pg-{db}")[
            "spec"]["ingress"] for peer in rule.get("from", []) if "podSelector" in peer
            and {"protocol": "TCP", "port": 5432} in rule["ports"]]
        assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in admitted), f"pg-{db} refuses the Job"
        own = [p for p in ds.find(objects, "NetworkPolicy")
               if all(labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())]
        assert len(own) == 1, f"migrate-{db}: {len(own)} NetworkPolicies"


def test_services_migrate_only_through_prepare():
    """Start-up paths call shared.migrate.prepare (applies, or only checks where the Job migrates)."""
    offenders = []
    for path, tree in _app_sources():
        if path == ROOT / "shared" / "migrate.py":
            continue
        for call, name in _calls(tree):
            if name == "apply" and isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "migrate":
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not offenders, f"migrate.apply at a service's start (use migrate.prepare): {offenders}"


# ------------------------------------------------------------------ item 6: database connections

# Connections a pod opens besides its pool: the outbox relay's (or the notifier pipeline's) LISTEN
# connection, and one for the schema check or a migration at start.
EXTRA_CONNECTIONS_PER_POD = 2
# Kept back by PostgreSQL and CloudNativePG: superuser_reserved_connections (3), the operator's and
# the exporter's own connections, an operator's psql.
RESERVED_CONNECTIONS = 10


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_database_connections_fit_at_the_replica_maxima(overlay):
    """Every replica at its maximum (HPA maxReplicas, or the fixed count), plus a rollout's surge, each
    with a full pool, fits the database's max_connections (issue 19 item 6, arithmetic in the docs)."""
    from shared.settings import Settings

    objects = ds.overlay_objects(overlay)
    default_pool = Settings.model_fields["db_pool_max"].default
    common = next(o for o in ds.find(objects, "ConfigMap") if o["metadata"]["name"].startswith("changai-common"))
    need: dict[str, int] = {}
    for spec in ds.services():
        if not spec.database:
            continue
        dep = ds.one(objects, "Deployment", spec.name)
        hpas = [h for h in ds.find(objects, "HorizontalPodAutoscaler") if h["metadata"]["name"] == spec.name]
        replicas = hpas[0]["spec"]["maxReplicas"] if hpas else dep["spec"]["replicas"]
        surge = int(dep["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1))
        own = next(o for o in ds.find(objects, "ConfigMap") if o["metadata"]["name"].startswith(f"{spec.name}-config"))
        pool = int(own["data"].get("CHANGAI_DB_POOL_MAX", common["data"].get("CHANGAI_DB_POOL_MAX", default_pool)))
        need[spec.database] = need.get(spec.database, 0) + (replicas + surge) * (pool + EXTRA_CONNECTIONS_PER_POD)
    for db, n in need.items():
        limit = int(ds.one(objects, "Cluster", f"pg-{db}")["spec"]["postgresql"]["parameters"]["max_connections"])
        assert n + RESERVED_CONNECTIONS <= limit, (
            f"{overlay}: pg-{db} may need {n} + {RESERVED_CONNECTIONS} reserved connections, max_connections {limit}")


# ------------------------------------------------------------------ item 8: CloudNativePG network and metrics

CNPG_METRICS_PORT = ("metrics", 9187)  # the port CloudNativePG gives its instances' exporter


def _ingress_ports(policy: dict, peer_match) -> set[int]:
    return {p["port"] for rule in policy["spec"]["ingress"] for peer in rule.get("from", []) if peer_match(peer)
            for p in rule.get("ports", [])}


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_postgres_admits_the_operator_and_is_scraped(overlay):
    objects = ds.overlay_objects(overlay)
    for cluster in ds.find(objects, "Cluster"):
        name = cluster["metadata"]["name"]
        policy = ds.one(objects, "NetworkPolicy", name)
        operator = _ingress_ports(policy, lambda peer: (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get(
            "kubernetes.io/metadata.name") == "cnpg-system")
        assert {8000, 5432} <= operator, f"{name}: the operator reaches ports {sorted(operator)}, needs 8000 and 5432"
        monitoring = _ingress_ports(policy, lambda peer: (peer.get("namespaceSelector") or {}).get(
            "matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring")
        assert CNPG_METRICS_PORT[1] in monitoring
        monitors = [m for m in ds.find(objects, "PodMonitor")
                    if m["spec"]["selector"]["matchLabels"].get("cnpg.io/cluster") == name]
        assert len(monitors) == 1, f"{name}: {len(monitors)} PodMonitors"
        assert [e["port"] for e in monitors[0]["spec"]["podMetricsEndpoints"]] == [CNPG_METRICS_PORT[0]]


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_every_service_monitor_targets_a_port_of_its_service(overlay):
    objects = ds.overlay_objects(overlay)
    for monitor in ds.find(objects, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in ds.find(objects, "Service")
                    if all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for svc in services:
            ports = {p["name"] for p in svc["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in ports, f"{monitor['metadata']['name']}: port {endpoint['port']} not in {ports}"


# ------------------------------------------------------------------ item 10: the notifier's way out

PRIVATE_V4 = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"}
PRIVATE_V6 = {"fc00::/7", "fe80::/10", "::1/128"}


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_public_egress_is_any_port_but_never_private(overlay):
    objects = ds.overlay_objects(overlay)
    seen = 0
    for policy in ds.find(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            blocks = [peer["ipBlock"] for peer in rule.get("to", []) if "ipBlock" in peer]
            for block in blocks:
                name = policy["metadata"]["name"]
                if block["cidr"] == "0.0.0.0/0":
                    seen += 1
                    assert PRIVATE_V4 <= set(block.get("except", [])), f"{name}: private IPv4 reachable"
                    assert any(b["cidr"] == "::/0" for b in blocks), f"{name}: IPv4 to the internet but no IPv6 rule"
                if block["cidr"] == "::/0":
                    assert PRIVATE_V6 <= set(block.get("except", [])), f"{name}: private IPv6 reachable"
            if blocks:
                assert "ports" not in rule, f"{policy['metadata']['name']}: receivers may listen on any port"
    assert seen >= 2, "the notifier (API and worker) reach the receivers"


# ------------------------------------------------------------------ item 11: Grafana

def test_grafana_provisioning_uses_only_what_grafana_expands():
    """Grafana substitutes $VAR and ${VAR} in provisioning files, not the shell's ${VAR:-default}."""
    import re

    files = [*(ROOT / "deploy" / "grafana" / "provisioning").rglob("*.y*ml"),
             *(ROOT / "deploy" / "compose" / "grafana" / "provisioning").rglob("*.y*ml")]
    assert files
    for path in files:
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        bad = re.findall(r"\$\{[^}]*[:?+-][^}]*\}", text)
        assert not bad, f"{path.relative_to(ROOT)}: {bad} is not expanded by Grafana"


def test_docs_give_the_grafana_folder_annotation_flags():
    import yaml

    kustomization = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "monitoring" / "kustomization.yaml").read_text())
    annotations = kustomization["generatorOptions"]["annotations"]
    docs = (ROOT / "docs" / "deployment.md").read_text()
    for key in annotations:
        assert f"grafana.sidecar.dashboards.folderAnnotation={key}" in docs, (
            f"the dashboards' {key} annotation needs the sidecar flag in docs/deployment.md")
    assert "grafana.sidecar.dashboards.provider.foldersFromFilesStructure=true" in docs


# ------------------------------------------------------------------ item 9: DNS is the overlay's setting

@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_every_network_policy_allows_dns_as_the_overlay_says(overlay):
    """Each overlay says where DNS is (dns.yaml, through components/dns-egress); every NetworkPolicy with
    egress allows exactly that first. A cluster with NodeLocal DNSCache or OpenShift changes one file."""
    import yaml

    folder = ds.K8S / "overlays" / overlay
    (setting,) = [d for d in yaml.safe_load_all((folder / "dns.yaml").read_text()) if d]
    assert setting["kind"] == "ChangaiDNS"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert "../../components/dns-egress" in kustomization.get("components", [])
    objects = ds.overlay_objects(overlay)
    assert not ds.find(objects, "ChangaiDNS"), "the DNS setting is local-config: never applied"
    with_egress = [p for p in ds.find(objects, "NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]]
    assert len(with_egress) >= len(ds.services()) + len(ds.service_databases())
    for policy in with_egress:
        first = policy["spec"]["egress"][0]
        assert first == {"to": setting["spec"]["to"], "ports": setting["spec"]["ports"]}, (
            f"{overlay}: {policy['metadata']['name']} does not take DNS from dns.yaml")
