"""deploy/tools/pin_images.py against a registry on 127.0.0.1: a real HTTP server (a socket, not a
mock) that speaks the part of the registry API the tool uses: the anonymous Bearer-token challenge
(401 + WWW-Authenticate, a token endpoint) and HEAD/GET of /v2/<repository>/manifests/<tag>
answered with the Docker-Content-Digest header. The digests are the sha256 of the manifests it
serves, as a registry's are."""
from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import urllib.parse

import pytest

import deploy_support as ds
import pin_images

TOKEN = "anonymous-pull-token"
INDEX = "application/vnd.oci.image.index.v1+json"
SINGLE = "application/vnd.oci.image.manifest.v1+json"


def manifest(repository: str, tag: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [],
                       "annotations": {"test.name": f"{repository}:{tag}"}}).encode()


def digest_of(repository: str, tag: str) -> str:
    return "sha256:" + hashlib.sha256(manifest(repository, tag)).hexdigest()


class Registry(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, str, str | None]] = []
        self.token_queries: list[dict[str, list[str]]] = []
        self.missing: set[str] = set()  # "repository:tag" answered 404
        self.single: set[str] = set()  # answered as a single-platform manifest
        self.no_header: set[str] = set()  # answered without Docker-Content-Digest
        self.wrong_header: set[str] = set()  # a header that is not the body's digest

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Registry

    def log_message(self, *args):  # quiet
        pass

    def _manifest(self, send_body: bool):
        path = urllib.parse.urlparse(self.path).path
        self.server.requests.append((self.command, path, self.headers.get("Authorization")))
        if path == "/token":
            self.server.token_queries.append(urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query))
            body = json.dumps({"token": TOKEN}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if not (path.startswith("/v2/") and "/manifests/" in path):
            self.send_error(404)
            return
        repository, tag = path[len("/v2/"):].split("/manifests/")
        tag = urllib.parse.unquote(tag)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="{self.server.url}/token",service="test-registry",'
                                                 f'scope="repository:{repository}:pull"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        key = f"{repository}:{tag}"
        if key in self.server.missing:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = manifest(repository, tag)
        self.send_response(200)
        self.send_header("Content-Type", SINGLE if key in self.server.single else INDEX)
        self.send_header("Content-Length", str(len(body)))
        if key in self.server.wrong_header:
            if send_body:  # the HEAD gives none, so the tool GETs the manifest and hashes it
                self.send_header("Docker-Content-Digest", "sha256:" + "0" * 64)
        elif key not in self.server.no_header:
            self.send_header("Docker-Content-Digest", digest_of(repository, tag))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_HEAD(self):
        self._manifest(send_body=False)

    def do_GET(self):
        self._manifest(send_body=True)


@pytest.fixture
def registry():
    server = Registry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def image(name: str, tag: str) -> pin_images.Image:
    return pin_images.Image(name, name, tag, None, ())


def test_pin_resolves_an_official_image_through_the_token_flow(registry):
    endpoints = {"docker.io": registry.url}
    digest = pin_images.resolve_http(image("python", "3.11.15-slim-bookworm"), endpoints)
    assert digest == digest_of("library/python", "3.11.15-slim-bookworm")
    methods = [(m, p, auth) for m, p, auth in registry.requests if p != "/token"]
    # First a HEAD without a token (401), then the same HEAD with it; no GET needed.
    assert methods == [("HEAD", "/v2/library/python/manifests/3.11.15-slim-bookworm", None),
                       ("HEAD", "/v2/library/python/manifests/3.11.15-slim-bookworm", f"Bearer {TOKEN}")]
    assert registry.token_queries == [{"service": ["test-registry"], "scope": ["repository:library/python:pull"]}]


def test_pin_resolves_a_namespaced_image_on_its_own_registry(registry):
    ghcr = pin_images.Image("cnpg", "ghcr.io/cloudnative-pg/postgresql", "15.19-standard-bookworm", None, ())
    assert ghcr.registry == "ghcr.io" and ghcr.repository == "cloudnative-pg/postgresql"
    assert pin_images.Image("k", "apache/kafka", "4.3.1", None, ()).repository == "apache/kafka"
    assert pin_images.Image("p", "docker.io/python", "3", None, ()).repository == "library/python"
    digest = pin_images.resolve_http(ghcr, {"ghcr.io": registry.url})
    assert digest == digest_of("cloudnative-pg/postgresql", "15.19-standard-bookworm")


def test_pin_hashes_the_manifest_when_the_header_is_missing(registry):
    registry.no_header.add("library/postgres:15.19-bookworm")
    digest = pin_images.resolve_http(image("postgres", "15.19-bookworm"), {"docker.io": registry.url})
    assert digest == digest_of("library/postgres", "15.19-bookworm")
    assert [m for m, p, _ in registry.requests if p != "/token"][-1] == "GET"


def test_pin_refuses_what_it_cannot_trust(registry):
    endpoints = {"docker.io": registry.url}
    registry.missing.add("library/postgres:15.99-bookworm")
    registry.single.add("library/postgres:15.19-single")
    registry.wrong_header.add("library/postgres:15.19-wrong")
    with pytest.raises(pin_images.PinError, match="no such tag"):
        pin_images.resolve_http(image("postgres", "15.99-bookworm"), endpoints)
    with pytest.raises(pin_images.PinError, match="not a multi-arch index"):
        pin_images.resolve_http(image("postgres", "15.19-single"), endpoints)
    # --allow-single-platform takes it.
    assert pin_images.resolve_http(image("postgres", "15.19-single"), endpoints, allow_single=True) == \
        digest_of("library/postgres", "15.19-single")
    # A Docker-Content-Digest that is not the hash of the manifest served with it is not recorded.
    with pytest.raises(pin_images.PinError, match="hashes to"):
        pin_images.resolve_http(image("postgres", "15.19-wrong"), endpoints)
    with pytest.raises(pin_images.PinError, match="not sha256"):
        pin_images.record_digest("images:\n  a:\n    digest: null\n", "a", "sha256:1234")


def test_pin_records_digests_and_rewrites_the_references(tmp_path, registry, capsys):
    """The whole command on a copy of the repository's files: digests recorded in versions.yaml (its
    comments kept), every reference rewritten to tag@digest, nothing else touched (the database URLs'
    `@postgres:5432`), and then the static check of test_deploy_versions accepts the result."""
    import test_deploy_versions as tv

    root = tmp_path / "repo"
    versions_file = root / "deploy" / "versions.yaml"
    known = pin_images.images(pin_images.load(pin_images.VERSIONS_FILE))
    for name in {"deploy/versions.yaml", *(f for i in known for f in i.files)}:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ds.ROOT / name, root / name)
    compose_before = (root / "docker-compose.yml").read_text()

    # ghcr.io is unreachable (a closed port): that image stays without a digest, the exit status says so.
    closed = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    closed_url = f"http://127.0.0.1:{closed.server_address[1]}"
    closed.server_close()
    rc = pin_images.main(["--registry", f"docker.io={registry.url}", "--registry", f"ghcr.io={closed_url}"],
                         versions_file=versions_file, root=root)
    out = capsys.readouterr()
    assert rc == 1
    assert "NOT PINNED ghcr.io/cloudnative-pg/postgresql" in out.err
    assert "no digest recorded" in out.out and "ghcr.io/cloudnative-pg/postgresql" in out.out

    pinned = {i.name: i for i in pin_images.images(pin_images.load(versions_file))}
    for entry in known:
        got = pinned[entry.name].digest
        if entry.image.startswith("ghcr.io/"):
            assert got is None
        else:
            assert got == digest_of(pinned[entry.name].repository, entry.tag), entry.name
    # Comments and layout kept: only `digest: null` lines changed, into digests at the same indentation.
    before = pin_images.VERSIONS_FILE.read_text().splitlines()
    after = versions_file.read_text().splitlines()
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == len(known) - 1
    for b, a in changed:
        assert b.strip() == "digest: null" and a == b.replace("null", a.split("digest: ")[1])
        assert pin_images.DIGEST.fullmatch(a.split("digest: ")[1])

    compose = (root / "docker-compose.yml").read_text()
    assert f"image: grafana/grafana:{pinned['grafana'].tag}@{pinned['grafana'].digest}" in compose
    assert compose.count("@postgres:5432/") == compose_before.count("@postgres:5432/") > 0
    dockerfile = (root / "Dockerfile").read_text()
    assert f"ARG PYTHON_IMAGE=python:{pinned['python'].tag}@{pinned['python'].digest}" in dockerfile
    # Every reference in the rewritten files passes the static check (tag@digest, or tag where none).
    for entry in pinned.values():
        for name in entry.files:
            found = [m.group(0)[len(m.group("lead")):]
                     for m in pin_images.reference_pattern(entry.image).finditer((root / name).read_text())]
            assert found and all(tv.reference_problem(r, list(pinned.values())) is None for r in found), found
    assert pin_images.main(["--check"], versions_file=versions_file, root=root) == 0

    # Once ghcr.io answers, a second run pins the rest and changes nothing else.
    assert pin_images.main(["--registry", f"docker.io={registry.url}", "--registry", f"ghcr.io={registry.url}"],
                           versions_file=versions_file, root=root) == 0
    capsys.readouterr()
    cnpg = next(i for i in pin_images.images(pin_images.load(versions_file)) if i.name == "cnpg-postgresql")
    assert cnpg.digest == digest_of("cloudnative-pg/postgresql", cnpg.tag)
    pg = (root / "deploy" / "k8s" / "base" / "postgres" / "pg-membership.yaml").read_text()
    assert f"imageName: {cnpg.image}:{cnpg.tag}@{cnpg.digest}" in pg

    # A file edited by hand away from versions.yaml is found by --check.
    path = root / "docker-compose.yml"
    path.write_text(path.read_text().replace(f"grafana/grafana:{pinned['grafana'].tag}@", "grafana/grafana:12.0.0@"))
    assert pin_images.main(["--check"], versions_file=versions_file, root=root) == 1


def test_pin_only_rewrites_image_positions():
    entry = pin_images.Image("postgres", "postgres", "15.19-bookworm", "sha256:" + "a" * 64, ())
    text = ("    image: postgres:15-bookworm\n"
            "      URL: postgresql://x:${P}@postgres:5432/x\n"
            "  postgres:\n"
            "    image: \"postgres:15.1-bookworm@sha256:" + "b" * 64 + "\"\n"
            "    image: my/postgres:1.0.0\n")
    out, count = pin_images.rewrite(text, entry)
    assert count == 2
    assert out.splitlines() == [f"    image: {entry.reference}", "      URL: postgresql://x:${P}@postgres:5432/x",
                                "  postgres:", f"    image: \"{entry.reference}\"", "    image: my/postgres:1.0.0"]
    dockerfile = "ARG BASE=postgres:15\nFROM ${BASE} AS x\nFROM postgres:14.1 AS y\nRUN echo postgres:16.0\n"
    out, count = pin_images.rewrite(dockerfile, entry)
    assert count == 2 and "RUN echo postgres:16.0" in out
