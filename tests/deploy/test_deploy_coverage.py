"""Every service of deploy/local/stack.py (SERVICES) and every topic of shared/topics.py
(TOPICS) is deployed: in docker-compose.yml, in every Kubernetes overlay, and as a
Strimzi KafkaTopic with the declared partitions and retention. Read from the code, so a new
service or topic fails here until it is deployed."""
from __future__ import annotations

import pytest

import deploy_support as ds

SERVICES = ds.services()
SERVICE_IDS = [s.name for s in SERVICES]
# Compose services that are infrastructure, not services of stack.SERVICES.
COMPOSE_INFRA = {"kafka", "topics", "postgres", "receiver", "prometheus", "grafana"}


def _databases() -> set[str]:
    return set(ds.service_databases()) | {s.database for s in SERVICES if s.database}


# --------------------------------------------------------------------------- derived files

def test_deploy_derived_k8s_files_are_current():
    import sync_k8s

    stale = sync_k8s.differences()
    assert not stale, f"stale (run .venv/bin/python deploy/tools/sync_k8s.py and commit): {stale}"


# --------------------------------------------------------------------------- compose

def test_deploy_compose_has_exactly_the_services():
    names = set(ds.compose()["services"])
    assert names - COMPOSE_INFRA == set(SERVICE_IDS), (
        f"missing from docker-compose.yml: {set(SERVICE_IDS) - names}; "
        f"not in stack.SERVICES: {names - COMPOSE_INFRA - set(SERVICE_IDS)}")


@pytest.mark.parametrize("spec", SERVICES, ids=SERVICE_IDS)
def test_deploy_compose_service_matches_the_code(spec):
    svc = ds.compose()["services"][spec.name]
    env = ds.compose_environment(svc)
    assert svc["command"] == list(spec.command)
    assert svc.get("image") == ds.compose()["services"]["topics"]["image"], "every service runs the one image"
    assert env["CHANGAI_SERVICE"] == spec.name
    assert env["CHANGAI_HTTP_PORT"] == str(spec.port)
    assert env["CHANGAI_HTTP_HOST"] == "0.0.0.0"
    assert env["CHANGAI_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert f"127.0.0.1:{spec.port}:{spec.port}" in svc.get("ports", [])
    probe = " ".join(svc["healthcheck"]["test"])
    assert ("/readyz" if spec.role == "api" else "/livez") in probe
    deps = svc["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["topics"]["condition"] == "service_completed_successfully"
    if spec.database:
        url = env["CHANGAI_DATABASE_URL"]
        assert url.startswith(f"postgresql://{spec.database}:") and url.endswith(f"@postgres:5432/{spec.database}"), url
        assert deps["postgres"]["condition"] == "service_healthy"
    else:
        assert "CHANGAI_DATABASE_URL" not in env and "postgres" not in deps


def test_deploy_compose_databases_and_topics_job():
    services = ds.compose()["services"]
    created = set(ds.compose_environment(services["postgres"])["CHANGAI_DATABASES"].split())
    assert created == _databases()
    assert services["topics"]["command"] == ["python", "-m", "shared.topics", "create"]


def test_deploy_compose_prometheus_scrapes_every_service():
    import yaml

    config = yaml.safe_load((ds.ROOT / "deploy" / "compose" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
            for job in config["scrape_configs"]}
    wanted = {s.name: [f"{s.name}:{s.port}"] for s in SERVICES}
    assert {j: t for j, t in jobs.items() if j != "prometheus"} == wanted


# --------------------------------------------------------------------------- Kubernetes

def _configmap(objects, prefix: str) -> dict:
    found = [o for o in ds.find(objects, "ConfigMap") if o["metadata"]["name"].rsplit("-", 1)[0] == prefix
             or o["metadata"]["name"] == prefix]
    assert len(found) == 1, f"ConfigMap {prefix}: found {[o['metadata']['name'] for o in found]}"
    return found[0]["data"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or selector).items())


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_deploy_k8s_has_exactly_the_services(overlay):
    objects = ds.overlay_objects(overlay)
    for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "ServiceMonitor"):
        names = {o["metadata"]["name"] for o in ds.find(objects, kind)}
        assert names == set(SERVICE_IDS), f"{overlay}: {kind}s {sorted(names)} != services {sorted(SERVICE_IDS)}"
    # CPU autoscaling for the stateless APIs only: a Faust worker's scale event is a rebalance and a replay.
    apis = {s.name for s in SERVICES if s.role == "api"}
    names = {o["metadata"]["name"] for o in ds.find(objects, "HorizontalPodAutoscaler")}
    assert names == apis, f"{overlay}: HorizontalPodAutoscalers {sorted(names)} != APIs {sorted(apis)}"
    clusters = {o["metadata"]["name"] for o in ds.find(objects, "Cluster")}
    assert clusters == {f"pg-{d}" for d in _databases()}


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
@pytest.mark.parametrize("spec", SERVICES, ids=SERVICE_IDS)
def test_deploy_k8s_service_matches_the_code(spec, overlay):
    objects = ds.overlay_objects(overlay)
    dep = ds.one(objects, "Deployment", spec.name)
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert _selects(dep["spec"]["selector"], labels)
    (container,) = pod["spec"]["containers"]
    assert tuple(container["command"]) == spec.command
    assert {"name": "http", "containerPort": spec.port, "protocol": "TCP"} in container["ports"]
    # Settings: the service's own ConfigMap and the common one.
    refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
    own = _configmap(objects, f"{spec.name}-config")
    common = _configmap(objects, "changai-common")
    assert {o["metadata"]["name"] for o in ds.find(objects, "ConfigMap")} >= set(refs)
    assert own["CHANGAI_SERVICE"] == spec.name and own["CHANGAI_HTTP_PORT"] == str(spec.port)
    assert common["CHANGAI_HTTP_HOST"] == "0.0.0.0"
    kafka = ds.find(objects, "Kafka")[0]
    (listener,) = kafka["spec"]["kafka"]["listeners"]  # the TLS one (test_deploy_kafka_security)
    assert common["CHANGAI_KAFKA_BOOTSTRAP"] == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    # Probes, resources, security.
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz" if spec.role == "api" else "/livez",
                                                      "port": "http"}
    for what in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][what]), f"resources.{what}"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["serviceAccountName"] == spec.name
    # Database: the CloudNativePG cluster of its database, through the operator's app Secret.
    env = {e["name"]: e for e in container.get("env", [])}
    if spec.database:
        ref = env["CHANGAI_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"pg-{spec.database}-app", "key": "uri"}
        initdb = ds.one(objects, "Cluster", f"pg-{spec.database}")["spec"]["bootstrap"]["initdb"]
        assert initdb["database"] == spec.database and initdb["owner"] == spec.database
    else:
        assert "CHANGAI_DATABASE_URL" not in env
    # Service, PDB, ServiceMonitor select these pods; the HPA scales this Deployment.
    svc = ds.one(objects, "Service", spec.name)
    assert _selects(svc["spec"]["selector"], labels)
    ports = [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]]
    # APIs: /metrics on a port of its own (CHANGAI_METRICS_PORT), never on the one an ingress routes.
    metrics_port = int(common.get("CHANGAI_METRICS_PORT", "0"))
    if spec.role == "api":
        assert metrics_port and metrics_port != spec.port
        assert ports == [("http", spec.port, "http"), ("metrics", metrics_port, "metrics")]
        assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in container["ports"]
    else:
        assert ports == [("http", spec.port, "http")]
    assert _selects(ds.one(objects, "PodDisruptionBudget", spec.name)["spec"]["selector"], labels)
    monitor = ds.one(objects, "ServiceMonitor", spec.name)["spec"]
    assert _selects(monitor["selector"], svc["metadata"]["labels"])
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [
        ("metrics" if spec.role == "api" else "http", "/metrics")]
    if spec.role == "api":
        hpa = ds.one(objects, "HorizontalPodAutoscaler", spec.name)["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name}
        assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    else:
        topics = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in ds.find(objects, "KafkaTopic")}
        bound = min([topics[name] for name in ds.domain_topics()] + [ds.faust_table_partitions()])
        assert 1 <= dep["spec"]["replicas"] <= bound, (
            f"{overlay}: Faust worker {spec.name} has {dep['spec'].get('replicas')} replicas (fixed, no autoscaler), "
            f"at most the {bound} partitions of its topics and tables: the extra replicas would idle")


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
@pytest.mark.parametrize("spec", SERVICES, ids=SERVICE_IDS)
def test_deploy_k8s_network_policy_allows_only_what_the_service_needs(spec, overlay):
    objects = ds.overlay_objects(overlay)
    labels = ds.one(objects, "Deployment", spec.name)["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in ds.find(objects, "NetworkPolicy") if _selects(p["spec"]["podSelector"], labels)]
    assert len(policies) == 1, f"{spec.name}: {len(policies)} NetworkPolicies select its pods"
    policy = policies[0]["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    peers = [(peer.get("podSelector", {}).get("matchLabels", {}), rule.get("ports", []))
             for rule in policy["egress"] for peer in rule.get("to", [])]
    kafka = ds.find(objects, "Kafka")[0]
    port = kafka["spec"]["kafka"]["listeners"][0]["port"]
    assert any(sel.get("strimzi.io/cluster") == kafka["metadata"]["name"] and {"protocol": "TCP", "port": port} in ports
               for sel, ports in peers), "no egress to the Kafka brokers"
    # DNS: the overlay's setting (dns.yaml), checked by test_deploy_production.
    assert policy["egress"][0]["ports"] and any(p.get("port") in (53, 5353) for p in policy["egress"][0]["ports"]), \
        "no egress to DNS"
    databases = {sel["cnpg.io/cluster"] for sel, _ in peers if "cnpg.io/cluster" in sel}
    assert databases == ({f"pg-{spec.database}"} if spec.database else set()), "egress to other services' databases"
    # Kafka admits the pod (Strimzi's networkPolicyPeers), and its database does.
    listener_peers = [p["podSelector"]["matchLabels"] for lst in ds.find(objects, "Kafka")[0]["spec"]["kafka"][
        "listeners"] for p in lst.get("networkPolicyPeers", [])]
    assert any(_selects(sel, labels) for sel in listener_peers), "the Kafka listener does not admit this service"
    if spec.database:
        db_policy = ds.one(objects, "NetworkPolicy", f"pg-{spec.database}")["spec"]
        admitted = [peer["podSelector"] for rule in db_policy["ingress"] for peer in rule.get("from", [])
                    if "podSelector" in peer and {"protocol": "TCP", "port": 5432} in rule["ports"]]
        assert any(_selects(sel, labels) for sel in admitted), f"pg-{spec.database} does not admit {spec.name}"


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_deploy_k8s_secrets_exist_or_are_provided_outside(overlay):
    objects = ds.overlay_objects(overlay)
    secrets = {o["metadata"]["name"] for o in ds.find(objects, "Secret")}
    clusters = {o["metadata"]["name"] for o in ds.find(objects, "Cluster")}
    external = {"changai-secrets"} if overlay == "prod" else set()  # created from the secret store (README.md, "Deployment")
    # Strimzi's User Operator writes a Secret per KafkaUser (its name), the Cluster Operator the cluster CA's.
    kafka_users = {o["metadata"]["name"] for o in ds.find(objects, "KafkaUser")}
    kafka_ca = {f"{o['metadata']['name']}-cluster-ca-cert" for o in ds.find(objects, "Kafka")}
    for dep in ds.find(objects, "Deployment"):
        for volume in dep["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets | kafka_ca, f"{dep['metadata']['name']}: {volume}"
        for env in dep["spec"]["template"]["spec"]["containers"][0].get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if not ref or ref.get("optional"):
                continue
            name = ref["name"]
            made_by_cnpg = name.endswith("-app") and name[: -len("-app")] in clusters
            assert name in secrets or made_by_cnpg or name in external or name in kafka_users, \
                f"{dep['metadata']['name']}: Secret {name}?"


# --------------------------------------------------------------------------- topics

@pytest.mark.parametrize("target", ["base", *(f"overlays/{o}" for o in ds.OVERLAYS)])
def test_deploy_kafka_topics_match_the_code(target):
    objects = ds.build(target)
    declared = {t.name: t for t in ds.topics()}
    kafka_topics = {o["spec"]["topicName"]: o for o in ds.find(objects, "KafkaTopic")}
    assert set(kafka_topics) == set(declared), (
        f"{target}: missing KafkaTopics {set(declared) - set(kafka_topics)}; "
        f"not in shared/topics.py: {set(kafka_topics) - set(declared)}")
    kafka = ds.one(objects, "Kafka", "changai")
    assert str(kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"]).lower() == "false"
    brokers = sum(p["spec"]["replicas"] for p in ds.find(objects, "KafkaNodePool") if "broker" in p["spec"]["roles"])
    for name, topic in declared.items():
        obj = kafka_topics[name]
        spec = obj["spec"]
        assert obj["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        if target == "overlays/prod":
            assert spec["partitions"] >= topic.partitions, f"{name}: fewer partitions than declared"
        else:
            assert spec["partitions"] == topic.partitions, f"{name}: {spec['partitions']} != {topic.partitions}"
        if name in ds.domain_topics():
            # Faust co-partitions its tables with these: their count is fixed everywhere.
            assert spec["partitions"] == topic.partitions, f"{name}: partitions changed"
        config = {k: str(v) for k, v in spec["config"].items()}
        for key, value in topic.configs().items():
            assert config.get(key) == str(value), f"{name}: {key} is {config.get(key)!r}, declared {value!r}"
        assert 1 <= spec["replicas"] <= brokers, f"{name}: replicas {spec['replicas']} with {brokers} brokers"
        assert int(config["min.insync.replicas"]) <= spec["replicas"]


@pytest.mark.parametrize("target", ["base", *(f"overlays/{o}" for o in ds.OVERLAYS)])
def test_deploy_replication_fits_the_brokers(target):
    """The broker defaults and the stream processors' own topics (CHANGAI_STREAM_REPLICATION_FACTOR)
    ask no more replicas than there are brokers, and at least as many as min.insync.replicas."""
    objects = ds.build(target)
    brokers = sum(p["spec"]["replicas"] for p in ds.find(objects, "KafkaNodePool") if "broker" in p["spec"]["roles"])
    config = ds.one(objects, "Kafka", "changai")["spec"]["kafka"]["config"]
    common = next(o for o in ds.find(objects, "ConfigMap") if o["metadata"]["name"].startswith("changai-common"))
    streams = int(common["data"]["CHANGAI_STREAM_REPLICATION_FACTOR"])
    insync = int(config["min.insync.replicas"])
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor"):
        assert insync <= int(config[key]) <= brokers, f"{target}: {key} {config[key]}, {brokers} broker(s)"
    assert insync <= streams <= brokers, f"{target}: stream replication {streams}, {brokers} broker(s)"
