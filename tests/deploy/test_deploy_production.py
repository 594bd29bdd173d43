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
