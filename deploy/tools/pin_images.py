"""Pin the third-party images of deploy/versions.yaml by digest, and write the references.

    .venv/bin/python deploy/tools/pin_images.py            # resolve every tag, record, rewrite the files
    .venv/bin/python deploy/tools/pin_images.py --write    # only rewrite the files from versions.yaml
    .venv/bin/python deploy/tools/pin_images.py --check    # exit 1 when a file differs from versions.yaml

Resolving asks each image's registry, over its HTTP API (the Docker Registry v2 / OCI
distribution API), for the manifest of the tag: a HEAD with the index media types in
`Accept`, answered by the `Docker-Content-Digest` header (a GET, whose body is hashed, when a
registry leaves the header out). A 401 with a `WWW-Authenticate: Bearer` challenge is answered
with an anonymous token from the challenge's realm (Docker Hub's and ghcr.io's flow). With
`--buildx`, `docker buildx imagetools inspect` is asked instead (it uses docker's own
credentials). The digest recorded is the multi-arch index's (the manifest list), so one pin
serves amd64 and arm64 nodes; a tag that names a single-platform manifest is refused unless
`--allow-single-platform`.

Then every reference in the files each image lists (`files:`) is rewritten to
`image:tag@digest` (or `image:tag` while no digest is recorded). A registry that cannot be
reached leaves that image's digest as it was and is reported; the exit status is 1 then.

`--registry HOST=URL` sends the requests for HOST to URL instead (a mirror, or the test's
local server); Docker Hub's images (no host in the name) are HOST `docker.io`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = ROOT / "deploy" / "versions.yaml"

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
SINGLE_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json")
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "https://registry-1.docker.io"
TIMEOUT_S = 30


class PinError(Exception):
    pass


@dataclass(frozen=True)
class Image:
    name: str  # key in versions.yaml
    image: str  # repository as written in the files, e.g. "python", "ghcr.io/cloudnative-pg/postgresql"
    tag: str
    digest: str | None
    files: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"{self.image}:{self.tag}" + (f"@{self.digest}" if self.digest else "")

    @property
    def registry(self) -> str:
        first = self.image.split("/", 1)[0]
        if "/" in self.image and ("." in first or ":" in first or first == "localhost"):
            return first
        return DOCKER_HUB

    @property
    def repository(self) -> str:
        """The repository path on its registry (Docker Hub's official images live under library/)."""
        path = self.image.split("/", 1)[1] if self.image.split("/", 1)[0] == self.registry else self.image
        return f"library/{path}" if self.registry == DOCKER_HUB and "/" not in path else path


# --------------------------------------------------------------------------- versions file

def load(path: Path = VERSIONS_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def images(versions: dict[str, Any]) -> list[Image]:
    out = []
    for name, entry in versions["images"].items():
        digest = entry.get("digest")
        if digest is not None and not DIGEST.fullmatch(str(digest)):
            raise PinError(f"{name}: digest {digest!r} is not sha256:<64 hex>")
        out.append(Image(name, entry["image"], str(entry["tag"]), digest, tuple(entry.get("files") or ())))
    return out


def record_digest(text: str, name: str, digest: str) -> str:
    """`text` (versions.yaml) with the `digest:` of image `name` set, comments and layout kept."""
    if not DIGEST.fullmatch(digest):
        raise PinError(f"{name}: refusing to record {digest!r}: not sha256:<64 hex>")
    lines = text.splitlines(keepends=True)
    in_images = False
    entry_level: int | None = None  # indentation of the image names under `images:`
    current: str | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            in_images, entry_level, current = stripped == "images:", None, None
            continue
        if not in_images:
            continue
        if entry_level is None:
            entry_level = indent
        if indent == entry_level:
            current = stripped[:-1] if stripped.endswith(":") else None
            continue
        match = re.match(r"(\s*digest:)\s*(\S*)(.*)$", line.rstrip("\n"))
        if current == name and indent > entry_level and match:
            lines[i] = f"{match.group(1)} {digest}{match.group(3)}\n"
            return "".join(lines)
    raise PinError(f"versions.yaml has no `digest:` line for image {name!r}")


# --------------------------------------------------------------------------- references in files

def reference_pattern(image: str) -> re.Pattern[str]:
    """`image:<tag>[@sha256:...]` where an image is named: after `image:` / `imageName:` (Compose,
    Kubernetes), `FROM` or an `ARG NAME=` default (Dockerfile), optionally quoted; nowhere else
    (a URL's `@postgres:5432` is not an image)."""
    return re.compile(r"(?P<lead>(?:\bimage:|\bimageName:|^\s*FROM|^\s*ARG\s+\w+=)\s*[\"']?)"
                      + re.escape(image) + r":[\w][\w.-]*(?:@sha256:[0-9a-f]{64})?(?![\w.@-])", re.M)


def rewrite(text: str, image: Image) -> tuple[str, int]:
    return reference_pattern(image.image).subn(lambda m: m.group("lead") + image.reference, text)


def write_files(all_images: list[Image], root: Path = ROOT, check: bool = False) -> list[str]:
    """Rewrite the references; return the files that differed (and, with `check`, leave them)."""
    by_file: dict[str, list[Image]] = {}
    for image in all_images:
        for name in image.files:
            by_file.setdefault(name, []).append(image)
    stale = []
    for name, listed in sorted(by_file.items()):
        path = root / name
        text = original = path.read_text()
        for image in listed:
            text, count = rewrite(text, image)
            if count == 0:
                raise PinError(f"{name}: no reference to {image.image} (versions.yaml lists it there)")
        if text != original:
            stale.append(name)
            if not check:
                path.write_text(text)
    return stale


# --------------------------------------------------------------------------- registry

def _challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        raise PinError(f"registry asks for {scheme} authentication; only anonymous Bearer tokens are supported")
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def _token(challenge: dict[str, str], repository: str) -> str:
    if "realm" not in challenge:
        raise PinError(f"Bearer challenge without realm: {challenge}")
    scope = challenge.get("scope") or f"repository:{repository}:pull"
    query = {"service": challenge.get("service", ""), "scope": scope}
    url = challenge["realm"] + "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        body = json.loads(response.read())
    token = body.get("token") or body.get("access_token")
    if not token:
        raise PinError(f"token endpoint {challenge['realm']} returned no token")
    return str(token)


def _request(method: str, url: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    accept = ", ".join(INDEX_TYPES + SINGLE_TYPES)
    headers = {"Accept": accept, "User-Agent": "changai-pin-images"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def resolve_http(image: Image, endpoints: dict[str, str], allow_single: bool = False) -> str:
    """The digest the registry gives for `image.tag` (HEAD, then GET if the header is missing)."""
    base = endpoints.get(image.registry) or (DOCKER_HUB_API if image.registry == DOCKER_HUB
                                              else f"https://{image.registry}")
    url = f"{base.rstrip('/')}/v2/{image.repository}/manifests/{urllib.parse.quote(image.tag, safe='')}"
    token = None
    for method in ("HEAD", "GET"):
        status, headers, body = _request(method, url, token)
        if status == 401 and token is None:
            token = _token(_challenge(headers.get("www-authenticate", "")), image.repository)
            status, headers, body = _request(method, url, token)
        if status == 404:
            raise PinError(f"{image.image}:{image.tag}: no such tag on {image.registry} (404)")
        if status != 200:
            raise PinError(f"{image.image}:{image.tag}: {method} {url} answered {status}")
        media_type = headers.get("content-type", "").split(";")[0].strip()
        if media_type not in INDEX_TYPES and not (allow_single and media_type in SINGLE_TYPES):
            raise PinError(f"{image.image}:{image.tag} is a {media_type or 'manifest of unknown type'}, "
                           "not a multi-arch index (--allow-single-platform to pin it anyway)")
        digest = headers.get("docker-content-digest")
        if method == "GET" and body:
            computed = "sha256:" + hashlib.sha256(body).hexdigest()
            if digest and digest != computed:
                raise PinError(f"{image.image}:{image.tag}: Docker-Content-Digest {digest} but the body hashes "
                               f"to {computed}")
            digest = digest or computed
        if digest:
            if not DIGEST.fullmatch(digest):
                raise PinError(f"{image.image}:{image.tag}: malformed digest {digest!r}")
            return digest
    raise PinError(f"{image.image}:{image.tag}: the registry gave no digest")


def resolve_buildx(image: Image) -> str:
    docker = shutil.which("docker")
    if not docker:
        raise PinError("--buildx: docker is not installed")
    done = subprocess.run([docker, "buildx", "imagetools", "inspect", f"{image.image}:{image.tag}",
                           "--format", "{{json .Manifest}}"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise PinError(f"{image.image}:{image.tag}: docker buildx imagetools inspect failed: {done.stderr.strip()}")
    manifest = json.loads(done.stdout)
    digest, media_type = manifest.get("digest", ""), manifest.get("mediaType", "")
    if media_type not in INDEX_TYPES:
        raise PinError(f"{image.image}:{image.tag} is a {media_type}, not a multi-arch index")
    if not DIGEST.fullmatch(digest):
        raise PinError(f"{image.image}:{image.tag}: malformed digest {digest!r}")
    return str(digest)


# --------------------------------------------------------------------------- command

def missing_digests(all_images: list[Image]) -> list[str]:
    return [f"{i.image}:{i.tag}" for i in all_images if not i.digest]


def main(argv: list[str] | None = None, versions_file: Path = VERSIONS_FILE, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="only rewrite the files from versions.yaml")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file differs from versions.yaml")
    parser.add_argument("--buildx", action="store_true", help="ask `docker buildx imagetools inspect`")
    parser.add_argument("--registry", action="append", default=[], metavar="HOST=URL",
                        help="send the requests for HOST (docker.io, ghcr.io, ...) to URL")
    parser.add_argument("--allow-single-platform", action="store_true")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="resolve only these images")
    args = parser.parse_args(argv)
    endpoints = dict(item.split("=", 1) for item in args.registry)

    failures = []
    if not (args.write or args.check):
        text = versions_file.read_text()
        for image in images(yaml.safe_load(text)):
            if args.only and image.name not in args.only:
                continue
            try:
                digest = resolve_buildx(image) if args.buildx else resolve_http(image, endpoints,
                                                                                  args.allow_single_platform)
            except (PinError, OSError, ValueError) as error:
                failures.append(f"{image.name}: {error}")
                print(f"NOT PINNED {image.image}:{image.tag}: {error}", file=sys.stderr)
                continue
            if digest != image.digest:
                text = record_digest(text, image.name, digest)
            print(f"{image.image}:{image.tag}@{digest}")
        versions_file.write_text(text)

    all_images = images(load(versions_file))
    stale = write_files(all_images, root, check=args.check)
    for name in stale:
        print(f"{'differs from versions.yaml' if args.check else 'rewrote'}: {name}")
    missing = missing_digests(all_images)
    if missing:
        print("no digest recorded (not resolvable from this machine; run deploy/tools/pin_images.py where the "
              "registry is reachable): " + ", ".join(missing))
    return 1 if failures or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
