"""Static checks of what a platform team asks for (issue 19, "What a platform team will ask for"):
Kafka authentication and ACLs, Kafka and PostgreSQL metrics and alerts, spread, backups."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess

import deploy_support as ds
import pytest

PLATFORM_RULES = ds.RULES_DIR / "kubernetes" / "platform.rules.yml"


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _common(objects) -> dict[str, str]:
    """changai-common (its name carries kustomize's hash suffix)."""
    (found,) = [o for o in ds.find(objects, "ConfigMap") if o["metadata"]["name"].rsplit("-", 1)[0] == "changai-common"]
    return found["data"]


# ------------------------------------------------------------------ Kafka: authentication and ACLs


def check_kafka_listens_only_with_tls_and_scram(objects) -> None:
    kafka = ds.one(objects, "Kafka", "changai")["spec"]
    listeners = kafka["kafka"]["listeners"]
    plain = [lst["name"] for lst in listeners if not lst["tls"] or lst.get("authentication", {}).get("type") is None]
    assert not plain, f"listeners without TLS or authentication: {plain}"
    assert all(lst["authentication"]["type"] == "scram-sha-512" for lst in listeners)
    assert kafka["kafka"].get("authorization", {}).get("type") == "simple", (
        "ACLs are not enforced without an authorizer"
    )
    assert "userOperator" in kafka["entityOperator"], "no User Operator: the KafkaUsers would never get a password"


def _code_groups() -> set[str]:
    """Every consumer group the code uses: the services' *group* settings and the Faust app ids."""
    from services.funding.settings import FundingSettings
    from services.intake.settings import IntakeSettings
    from services.membership.settings import MembershipSettings
    from services.notifier.settings import NotifierSettings
    from services.projection.settings import ProjectionSettings
    from services.training.settings import TrainingSettings

    groups = set()
    for cls in (FundingSettings, IntakeSettings, MembershipSettings, TrainingSettings):
        groups |= {f.default for name, f in cls.model_fields.items() if "group" in name}
    groups.add("changai-" + NotifierSettings.model_fields["notifier_app_id"].default)
    groups.add(ProjectionSettings.model_fields["projection_app_id"].default)
    return groups


def check_every_kafka_user_acl_names_a_topic_or_group_that_exists(objects) -> None:
    from services.training.consumers import group_id

    topics = {t["spec"]["topicName"] for t in ds.find(objects, "KafkaTopic")}
    groups = _code_groups()
    granted_groups = set()
    users = ds.find(objects, "KafkaUser")
    assert users
    for user in users:
        name = user["metadata"]["name"]
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "changai"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        for acl in user["spec"]["authorization"]["acls"]:
            resource, ops = acl["resource"], acl["operations"]
            assert "All" not in ops and resource["type"] in ("topic", "group"), f"{name}: too broad: {acl}"
            assert resource.get("name") not in (None, "*"), f"{name}: wildcard: {acl}"
            if resource["type"] == "topic":
                assert resource["patternType"] == "literal", f"{name}: {acl}"
                assert resource["name"] in topics, f"{name}: ACL on {resource['name']}, which is no KafkaTopic"
            elif resource["patternType"] == "literal":
                assert resource["name"] in groups, f"{name}: ACL on group {resource['name']}, which no code uses"
                granted_groups.add(resource["name"])
            else:  # a prefix: the training read model's generations, training-members-g<N>
                owners = {g for g in groups if group_id(g, 1).startswith(resource["name"])}
                assert owners, f"{name}: prefix ACL {resource['name']} matches no group of the code"
                granted_groups |= owners
    assert granted_groups == groups, f"groups no KafkaUser may use: {groups - granted_groups}"


def _service_users(objects) -> dict[str, dict]:
    return {u["metadata"]["name"]: u for u in ds.find(objects, "KafkaUser")}


def _topic_ops(user: dict) -> dict[str, set[str]]:
    return {
        a["resource"]["name"]: set(a["operations"])
        for a in user["spec"]["authorization"]["acls"]
        if a["resource"]["type"] == "topic"
    }


def check_every_service_logs_in_as_its_own_kafka_user(objects) -> None:
    users = _service_users(objects)
    common = _common(objects)
    kafka = ds.one(objects, "Kafka", "changai")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert common["CHANGAI_KAFKA_BOOTSTRAP"] == f"changai-kafka-bootstrap:{listener['port']}"
    assert common["CHANGAI_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert common["CHANGAI_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    cafile = common["CHANGAI_KAFKA_SSL_CAFILE"]
    for spec in ds.services():
        dep = ds.one(objects, "Deployment", spec.name)
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = _env(container)
        assert {"CHANGAI_KAFKA_SASL_USERNAME", "CHANGAI_KAFKA_SASL_PASSWORD"} <= set(env), f"{spec.name}: no login"
        assert env["CHANGAI_KAFKA_SASL_USERNAME"]["value"] == spec.name and spec.name in users, spec.name
        assert env["CHANGAI_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": spec.name, "key": "password"}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        (ca,) = [n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == "changai-cluster-ca-cert"]
        assert os.path.join(mounts[ca], "ca.crt") == cafile, (
            f"{spec.name}: the CA is not where CHANGAI_KAFKA_SSL_CAFILE says"
        )
    # No KafkaUser nobody logs in as, except the MirrorMaker's (prod) and the upstream systems' (one per kind
    # of intake source, logged in from outside the cluster).
    others = set(users) - {s.name for s in ds.services()} - {"mirror-maker"}
    assert all(u.startswith("intake-source-") for u in others), others


def test_kafka_users_grant_what_the_code_does():
    """Spot checks against the code, independent of the generator: the writers of each domain topic, and
    every consumer's dead letters."""
    from shared.topics import domain_topics

    users = _service_users(ds.overlay_objects("prod"))
    writers = {
        t: {u for u, user in users.items() if "Write" in _topic_ops(user).get(t, set())} for t in domain_topics()
    }
    from services.intake.settings import IntakeSettings

    intake_topics = IntakeSettings.model_fields["intake_kafka_topics"].default.split(",")
    for topic in intake_topics:  # an upstream system's user writes its intake topic and nothing else
        ops = _topic_ops(users[f"intake-source-{topic.removeprefix('intake.')}"])
        assert ops == {topic: {"Describe", "Write"}}, ops
    assert {u for u in users if u.startswith("intake-source-")} == {
        f"intake-source-{t.removeprefix('intake.')}" for t in intake_topics}
    assert writers["membership.events"] == {"membership"}
    assert writers["training.events"] == {"training"}
    assert writers["funding.events"] == {"funding"}
    assert writers["reform.events"] == {"reform"}
    assert writers["notifier.events"] == {"notifier-api", "notifier-worker"}  # one outbox table, two relays
    for user, spec in users.items():
        ops = _topic_ops(spec)
        for topic, granted in ops.items():
            if (
                "Read" in granted
                and not topic.endswith(".dlq")
                and f"{topic}.dlq"
                in {t["spec"]["topicName"] for t in ds.find(ds.overlay_objects("prod"), "KafkaTopic")}
            ):
                assert "Write" in ops.get(f"{topic}.dlq", set()) or user == "mirror-maker", (
                    f"{user} reads {topic} but may not write its dead letters"
                )


# ------------------------------------------------------------------ metrics and alerts


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_kafka_metrics_are_exported_and_scraped(overlay):
    objects = ds.overlay_objects(overlay)
    kafka = ds.one(objects, "Kafka", "changai")["spec"]
    ref = kafka["kafka"]["metricsConfig"]["valueFrom"]["configMapKeyRef"]
    config = ds.one(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
    rules = ds.yaml.safe_load(config)["rules"]
    assert rules, "the JMX exporter has no rules"
    exporter = kafka["kafkaExporter"]
    # The exporter reports every group of the code and every topic (its regexes filter what it reports).
    groups = {*_code_groups(), "training-members-g1"}
    assert all(re.match(exporter["groupRegex"], g) for g in groups), [
        g for g in groups if not re.match(exporter["groupRegex"], g)
    ]
    assert all(re.match(exporter["topicRegex"], t["spec"]["topicName"]) for t in ds.find(objects, "KafkaTopic"))
    monitors = {m["metadata"]["name"]: m for m in ds.find(objects, "PodMonitor")}
    assert monitors["kafka-brokers"]["spec"]["selector"]["matchLabels"]["strimzi.io/broker-role"] == "true"
    assert monitors["kafka-exporter"]["spec"]["selector"]["matchLabels"]["strimzi.io/name"] == "changai-kafka-exporter"
    for name in ("kafka-brokers", "kafka-exporter"):
        assert [e["port"] for e in monitors[name]["spec"]["podMetricsEndpoints"]] == ["tcp-prometheus"]
    # Every metric the platform alerts read from the brokers is one the rules produce.
    names = set(re.findall(r"\bkafka_(?:server|controller)_[a-z_]+", PLATFORM_RULES.read_text()))
    produced = [re.sub(r"\$\d+", "(.+)", r["name"]) for r in rules]
    for metric in names:
        assert any(re.fullmatch(p, metric) for p in produced), f"{metric}: no JMX exporter rule produces it"


def _jobs_of_monitors(objects) -> dict[str, str]:
    """What `absent()` must name for each monitor: a ServiceMonitor's job (its Service's name, the default
    jobLabel) or a PodMonitor's (<namespace>/<name>)."""
    jobs = {}
    for sm in ds.find(objects, "ServiceMonitor"):
        assert "jobLabel" not in sm["spec"]
        jobs[sm["metadata"]["name"]] = f'up{{job="{sm["metadata"]["name"]}"}}'
    for pm in ds.find(objects, "PodMonitor"):
        assert "jobLabel" not in pm["spec"]
        jobs[pm["metadata"]["name"]] = f'up{{job=~".+/{pm["metadata"]["name"]}"}}'
    return jobs


def check_every_scrape_target_has_an_absent_alert(objects) -> None:
    rules = [r for o in ds.find(objects, "PrometheusRule") for g in o["spec"]["groups"] for r in g["rules"]]
    absent = {m for r in rules if "alert" in r for m in re.findall(r"absent\((up\{[^}]*\})\)", r["expr"])}
    missing = {name: sel for name, sel in _jobs_of_monitors(objects).items() if sel not in absent}
    assert not missing, f"no absent() alert for {missing}"
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {
        "KafkaBrokerDown",
        "KafkaNoActiveController",
        "KafkaOfflinePartitions",
        "KafkaUnderReplicatedPartitions",
        "ChangaiVolumeAlmostFull",
        "ChangaiVolumeFillsWithin4Days",
    } <= alerts


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install the Debian prometheus package")
    return exe


def test_platform_rules_pass_promtool():
    check = subprocess.run([_promtool(), "check", "rules", str(PLATFORM_RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [_promtool(), "test", "rules", "platform.test.yml"],
        capture_output=True,
        text=True,
        cwd=PLATFORM_RULES.parent / "tests",
    )
    assert test.returncode == 0, test.stdout + test.stderr


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_volume_alerts_cover_every_volume(overlay):
    objects = ds.overlay_objects(overlay)
    expr = next(
        r["expr"]
        for o in ds.find(objects, "PrometheusRule")
        for g in o["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "ChangaiVolumeFillsWithin4Days"
    )
    pattern = re.search(r'persistentvolumeclaim=~"([^"]+)"', expr).group(1)
    pool = ds.one(objects, "KafkaNodePool", "dual-role")["spec"]
    claims = [
        f"data-{v['id']}-changai-dual-role-{n}" for v in pool["storage"]["volumes"] for n in range(pool["replicas"])
    ]
    for cluster in ds.find(objects, "Cluster"):
        claims += [f"{cluster['metadata']['name']}-{n}" for n in range(1, cluster["spec"]["instances"] + 1)]
    assert all(re.fullmatch(pattern, c) for c in claims), [c for c in claims if not re.fullmatch(pattern, c)]


# ------------------------------------------------------------------ spread and draining


def check_prod_spreads_kafka_and_postgres_over_zones_and_nodes(objects) -> None:
    kafka = ds.one(objects, "Kafka", "changai")["spec"]["kafka"]
    assert kafka["rack"]["topologyKey"] == "topology.kubernetes.io/zone"
    spread = ds.one(objects, "KafkaNodePool", "dual-role")["spec"]["template"]["pod"]["topologySpreadConstraints"]
    assert {(c["topologyKey"], c["whenUnsatisfiable"]) for c in spread} == {
        ("topology.kubernetes.io/zone", "DoNotSchedule"),
        ("kubernetes.io/hostname", "DoNotSchedule"),
    }
    for cluster in ds.find(objects, "Cluster"):
        spec = cluster["spec"]
        assert spec["affinity"]["enablePodAntiAffinity"] and spec["affinity"]["podAntiAffinityType"] == "required"
        assert spec["affinity"]["topologyKey"] == "kubernetes.io/hostname"
        assert [c["topologyKey"] for c in spec["topologySpreadConstraints"]] == ["topology.kubernetes.io/zone"]
        sync = spec["postgresql"].get("synchronous")
        assert sync, f"{cluster['metadata']['name']}: asynchronous replication"
        assert sync["number"] >= 1 and sync["number"] < spec["instances"] and sync["dataDurability"] == "required"


def check_http_services_drain_before_they_stop(objects) -> None:
    for spec in ds.services():
        if spec.role != "api":
            continue
        pod = ds.one(objects, "Deployment", spec.name)["spec"]["template"]["spec"]
        seconds = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert 0 < seconds < pod.get("terminationGracePeriodSeconds", 30) - 10, spec.name


# ------------------------------------------------------------------ backups


def check_prod_backs_up_every_database(objects) -> None:
    stores = {o["metadata"]["name"] for o in ds.find(objects, "ObjectStore")}
    scheduled = {}
    for backup in ds.find(objects, "ScheduledBackup"):
        spec = backup["spec"]
        assert spec["method"] == "plugin" and spec["pluginConfiguration"]["name"] == "barman-cloud.cloudnative-pg.io"
        assert len(spec["schedule"].split()) == 6, "CloudNativePG schedules have a seconds field"
        scheduled[spec["cluster"]["name"]] = backup
    for cluster in ds.find(objects, "Cluster"):
        name = cluster["metadata"]["name"]
        (plugin,) = cluster["spec"]["plugins"]
        assert plugin["name"] == "barman-cloud.cloudnative-pg.io" and plugin["isWALArchiver"] is True
        assert plugin["parameters"]["barmanObjectName"] in stores, name
        assert name in scheduled, f"{name}: no ScheduledBackup"
    assert set(scheduled) == {c["metadata"]["name"] for c in ds.find(objects, "Cluster")}


def check_prod_mirrors_every_domain_topic(objects) -> None:
    from shared.topics import BY_NAME, domain_topics

    (mirror,) = ds.find(objects, "KafkaMirrorMaker2")
    (source,) = mirror["spec"]["mirrors"]
    pattern = source["topicsPattern"]
    for topic in domain_topics():
        assert re.fullmatch(pattern, topic), f"{topic} is not mirrored"
        assert BY_NAME[topic].configs()["retention.ms"] == "-1"  # kept forever: the rebuild source
    user = source["source"]["authentication"]["username"]
    granted = _topic_ops(_service_users(objects)[user])
    assert set(granted) == set(domain_topics()) and all("Write" not in ops for ops in granted.values())
    pod_labels = mirror["spec"]["template"]["pod"]["metadata"]["labels"]
    assert pod_labels["changai.io/kafka-client"] == "true", "the listener's NetworkPolicy would refuse it"


# ------------------------------------------------------------------ the checks, and that they can fail

CHECKS = {
    "tls-and-scram": check_kafka_listens_only_with_tls_and_scram,
    "acls": check_every_kafka_user_acl_names_a_topic_or_group_that_exists,
    "kafka-login": check_every_service_logs_in_as_its_own_kafka_user,
    "absent-alerts": check_every_scrape_target_has_an_absent_alert,
    "drain": check_http_services_drain_before_they_stop,
}
PROD_CHECKS = {
    "spread": check_prod_spreads_kafka_and_postgres_over_zones_and_nodes,
    "backups": check_prod_backs_up_every_database,
    "mirror": check_prod_mirrors_every_domain_topic,
}


@pytest.mark.parametrize(
    ("overlay", "check"), [(o, c) for o in ds.OVERLAYS for c in CHECKS] + [("prod", c) for c in PROD_CHECKS]
)
def test_platform_check_holds(overlay, check):
    {**CHECKS, **PROD_CHECKS}[check](ds.overlay_objects(overlay))


def _mutated(mutate):
    objects = copy.deepcopy(ds.overlay_objects("prod"))
    mutate(objects)
    return objects


def _user(objects, name):
    return ds.one(objects, "KafkaUser", name)


def _container(objects, name):
    return ds.one(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def _acl(topic=None, group=None, ops=("Read", "Describe"), pattern="literal"):
    kind, name = ("topic", topic) if topic else ("group", group)
    return {"resource": {"type": kind, "name": name, "patternType": pattern}, "operations": list(ops)}


BREAKAGES = [
    (
        "tls-and-scram",
        lambda o: ds.one(o, "Kafka", "changai")["spec"]["kafka"]["listeners"].append(
            {"name": "plain", "port": 9092, "type": "internal", "tls": False}
        ),
        "a plaintext listener",
    ),
    ("tls-and-scram", lambda o: ds.one(o, "Kafka", "changai")["spec"]["kafka"].pop("authorization"), "no authorizer"),
    (
        "acls",
        lambda o: _user(o, "reform")["spec"]["authorization"]["acls"].append(_acl(topic="reform.evnts")),
        "an ACL on a topic that does not exist",
    ),
    (
        "acls",
        lambda o: _user(o, "intake")["spec"]["authorization"]["acls"].append(_acl(group="intake-typo")),
        "an ACL on a group no code uses",
    ),
    ("acls", lambda o: _user(o, "funding")["spec"]["authorization"]["acls"].pop(), "a group of the code ungranted"),
    (
        "acls",
        lambda o: _user(o, "reform")["spec"]["authorization"]["acls"].append(_acl(topic="reform.events", ops=("All",))),
        "All",
    ),
    (
        "kafka-login",
        lambda o: _container(o, "training")["env"].__setitem__(
            slice(None), [e for e in _container(o, "training")["env"] if e["name"] != "CHANGAI_KAFKA_SASL_PASSWORD"]
        ),
        "a service without its password",
    ),
    (
        "kafka-login",
        lambda o: next(e for e in _container(o, "funding")["env"] if e["name"] == "CHANGAI_KAFKA_SASL_USERNAME").update(
            value="membership"
        ),
        "a service logging in as another",
    ),
    (
        "absent-alerts",
        lambda o: o.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PodMonitor",
                "metadata": {"name": "new-thing"},
                "spec": {},
            }
        ),
        "a monitor without absent()",
    ),
    ("drain", lambda o: _container(o, "membership").pop("lifecycle"), "an API without preStop"),
    ("spread", lambda o: ds.find(o, "Cluster")[0]["spec"]["postgresql"].pop("synchronous"), "asynchronous replication"),
    ("backups", lambda o: o.remove(ds.find(o, "ScheduledBackup")[0]), "a database without a ScheduledBackup"),
    (
        "backups",
        lambda o: ds.find(o, "Cluster")[0]["spec"]["plugins"][0]["parameters"].update(barmanObjectName="elsewhere"),
        "WAL archived to an ObjectStore that does not exist",
    ),
    (
        "mirror",
        lambda o: ds.one(o, "KafkaMirrorMaker2", "changai-dr")["spec"]["mirrors"][0].update(
            topicsPattern="membership\\.events"
        ),
        "a domain topic not mirrored",
    ),
]


@pytest.mark.parametrize(("check", "mutate"), [pytest.param(c, m, id=why) for c, m, why in BREAKAGES])
def test_platform_check_fails_on_a_broken_manifest(check, mutate):
    with pytest.raises(AssertionError):
        {**CHECKS, **PROD_CHECKS}[check](_mutated(mutate))


# The families the Kafka Exporter (Strimzi's, danielqsj/kafka_exporter) serves, as its documentation lists them.
KAFKA_EXPORTER_METRICS = {
    "kafka_brokers",
    "kafka_topic_partitions",
    "kafka_topic_partition_current_offset",
    "kafka_topic_partition_oldest_offset",
    "kafka_topic_partition_in_sync_replica",
    "kafka_topic_partition_leader",
    "kafka_topic_partition_replicas",
    "kafka_topic_partition_under_replicated_partition",
    "kafka_consumergroup_current_offset",
    "kafka_consumergroup_lag",
    "kafka_consumergroup_members",
}


@pytest.mark.parametrize("overlay", ds.OVERLAYS)
def test_kubernetes_only_dashboard_panels_read_what_kubernetes_exports(overlay):
    """The dashboards' Kafka panels have no data outside Kubernetes (the dashboards' end-to-end test skips
    them): here every metric they read must be one the brokers' JMX rules or the Kafka Exporter produce."""
    from services.projection import dashboards

    objects = ds.overlay_objects(overlay)
    kafka = ds.one(objects, "Kafka", "changai")["spec"]
    ref = kafka["kafka"]["metricsConfig"]["valueFrom"]["configMapKeyRef"]
    rules = ds.yaml.safe_load(ds.one(objects, "ConfigMap", ref["name"])["data"][ref["key"]])["rules"]
    produced = [re.sub(r"\$\d+", "(.+)", r["name"]) for r in rules]
    read = [
        (title, name)
        for build in dashboards.DASHBOARDS.values()
        for title, expr in dashboards.queries(build())
        if dashboards.kubernetes_only(expr)
        for name in re.findall(r"\bkafka_[a-z_]+", expr)
    ]
    assert read, "no Kafka panel on the dashboards"
    for title, name in read:
        from_exporter = name in KAFKA_EXPORTER_METRICS and "kafkaExporter" in kafka
        assert from_exporter or any(re.fullmatch(p, name) for p in produced), f"{title}: nothing exports {name}"
