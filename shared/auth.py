"""Bearer JWTs with scopes and an organisation scope (a region code).

Every request carries a token; ``require("membership:write")`` checks the scope and
gives the route a :class:`Principal`, whose ``region`` limits what it may act on:
a caller scoped to a city may act on that city's counties, not on another city.
HS256 with a shared secret by default; RS256 through a JWKS URL by configuration.

Mint a token for local use:  ``python -m shared.auth mint --scope membership:write --region 640000``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from functools import lru_cache

import jwt
from fastapi import Request

from shared import regions
from shared.errors import Invalid, NotFound, OutOfScope
from shared.problems import Problem
from shared.settings import Settings, get_settings


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    region: str  # organisation scope: a GB/T 2260 code
    # A member unit of the reform coordination group the caller speaks for (its liaison officer), from
    # the optional ``unit`` claim; None for everyone else.
    unit: str | None = None

    # The one region rule of every service (scope + region):
    #   read of one record outside the scope  -> 404 (``ensure_visible``: never tells it exists)
    #   write naming a region outside it      -> 403 (``ensure_region``)
    #   list                                  -> cut to the scope (``scope_codes``)
    #   region-wide settings                  -> a region-level token (``ensure_region_level``)
    def may_act_on(self, region_code: str | None) -> bool:
        return region_code is not None and regions.contains(self.region, region_code)

    def ensure_region(self, region_code: str | None) -> None:
        """A write naming ``region_code``: 403 unless it is the caller's region or under it."""
        if not self.may_act_on(region_code):
            raise OutOfScope(f"token is scoped to {self.region}; {region_code} is not under it")

    def ensure_visible(self, region_code: str | None, what: str, ident: object = None) -> None:
        """A read (or a write addressed by id) of a record in ``region_code``: 404 outside the scope."""
        if not self.may_act_on(region_code):
            raise NotFound(what, ident)

    # The one owner rule, where records belong to a region or to a reform member unit (notifier channels):
    #   a liaison's token (a ``unit`` claim) acts for its own unit's records only, never a region's;
    #   any other token for its region's records, and for a unit's when it is region-level (the office).
    def may_act_for(self, region_code: str | None, unit_id: object = None) -> bool:
        if unit_id is not None:
            return str(unit_id) == self.unit if self.unit is not None else self.region == regions.REGION_ROOT
        return self.unit is None and self.may_act_on(region_code)

    def ensure_owner(self, region_code: str | None, unit_id: object = None) -> None:
        """A write naming an owner (a region, or a member unit): 403 unless the caller may act for it."""
        if not self.may_act_for(region_code, unit_id):
            if self.unit is not None:
                raise OutOfScope(f"token speaks for member unit {self.unit} only", kind="out-of-scope")
            raise OutOfScope(f"token is scoped to {self.region}; {unit_id or region_code} is not under it")

    def ensure_owner_visible(self, region_code: str | None, unit_id: object, what: str, ident: object = None) -> None:
        """A read (or a write addressed by id) of a record owned by a region or a unit: 404 outside the rule."""
        if not self.may_act_for(region_code, unit_id):
            raise NotFound(what, ident)

    def ensure_region_level(self) -> None:
        """Region-wide settings (funds, rates, routes) need a token scoped to the whole region."""
        if self.region != regions.REGION_ROOT:
            raise OutOfScope(
                f"this needs a region-level token ({regions.REGION_ROOT}); token is scoped to {self.region}"
            )

    def scope_codes(self, requested: str | None = None) -> list[str]:
        """Region codes a list covers: ``requested`` and below, cut to the caller's scope.

        A requested region above the caller's scope narrows to the caller's scope; one beside it is 403."""
        if requested is None:
            return regions.descendants(self.region)
        if regions.get(requested) is None:
            raise Invalid("region", "not a Ningxia region code (GB/T 2260)")
        if self.may_act_on(requested):
            return regions.descendants(requested)
        if regions.contains(requested, self.region):
            return regions.descendants(self.region)
        raise OutOfScope(f"token is scoped to {self.region}; {requested} is not under it")


def _unauthorized(detail: str, bad_token: bool = True) -> Problem:
    """401 with the RFC 6750 challenge: ``error="invalid_token"`` when a token was sent but refused."""
    challenge = 'Bearer realm="changai"'
    if bad_token:
        # a header holds printable ASCII only, and a quoted string no quote or backslash
        reason = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in detail)[:200]
        challenge += f', error="invalid_token", error_description="{reason}"'
    return Problem(401, "unauthorized", "Authentication required", detail, headers={"WWW-Authenticate": challenge})


@lru_cache
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True)


# Tokens verified already, each until it expires and for VERIFIED_FOR_S at most: a client sends the same token
# on every request, and the signature check (with pyjwt's claim checks ~9 % of a payment's CPU in the service)
# is then done once a minute, not per request. Keyed by the token and the settings that verified it.
VERIFIED_FOR_S = 60.0
_VERIFIED: dict[tuple, tuple[float, Principal]] = {}
_VERIFIED_MAX = 4096


async def decode_token(token: str, settings: Settings) -> Principal:
    cache_key = (
        token,
        settings.jwt_jwks_url,
        settings.jwt_secret.get_secret_value(),
        settings.jwt_algorithm,
        settings.jwt_audience,
        settings.jwt_issuer,
    )
    hit = _VERIFIED.get(cache_key)
    if hit is not None and time.time() < hit[0]:
        return hit[1]
    principal, expires = await _verify(token, settings)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[cache_key] = (min(expires, time.time() + VERIFIED_FOR_S), principal)
    return principal


async def _verify(token: str, settings: Settings) -> tuple[Principal, float]:
    try:
        if settings.jwt_jwks_url:
            key = (await asyncio.to_thread(_jwks_client(settings.jwt_jwks_url).get_signing_key_from_jwt, token)).key
            algorithms = ["RS256"]
        else:
            key = settings.jwt_secret.get_secret_value()
            algorithms = [settings.jwt_algorithm]
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "sub", "scope", "org"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token has expired") from None
    except jwt.PyJWTError as exc:
        raise _unauthorized(f"token is not valid: {exc}") from None
    org = str(claims["org"])
    if regions.get(org) is None:
        raise _unauthorized(f"token's organisation scope {org!r} is not a known region code")
    unit = claims.get("unit")
    principal = Principal(
        str(claims["sub"]), frozenset(str(claims["scope"]).split()), org, str(unit) if unit is not None else None
    )
    return principal, float(claims["exp"])


def require(scope: str):
    """FastAPI dependency: a valid bearer token that carries ``scope``."""

    # The settings are read here, not through a sub-dependency of their own: FastAPI solves each dependency
    # of a request anew (its cache key, its scopes), ~a fifth of what routing and dependencies cost a request.
    async def dependency(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise _unauthorized("send 'Authorization: Bearer <token>'", bad_token=False)
        principal = await decode_token(token.strip(), get_settings())
        if scope not in principal.scopes:
            challenge = f'Bearer realm="changai", error="insufficient_scope", scope="{scope}"'
            raise Problem(
                403,
                "insufficient-scope",
                "Token lacks the required scope",
                f"this call needs scope {scope!r}",
                headers={"WWW-Authenticate": challenge},
            )
        request.state.principal = principal
        return principal

    # read by document_scopes (the OpenAPI says which scope a route needs); set through __dict__, as a
    # function's type declares no such attribute
    dependency.__dict__["changai_scope"] = scope
    return dependency


def document_scopes(routes) -> None:
    """Write each route's scope into its OpenAPI operation: ``x-changai-scope`` and ``x-changai-access``
    (``read`` for GET/HEAD or a ``…:read`` scope, else ``write``), from the ``require(scope)`` it depends
    on. The authorisation matrix test (tests/e2e/test_authz_matrix.py) is generated from these."""
    from fastapi.routing import APIRoute

    def scopes_of(dependant) -> set[str]:
        own = getattr(dependant.call, "changai_scope", None)
        found: set[str] = {own} if own is not None else set()
        for sub in dependant.dependencies:
            found |= scopes_of(sub)
        return found

    for route in routes:
        included = getattr(route, "original_router", None)  # a router included in this one (FastAPI >= 0.120)
        if included is not None:
            document_scopes(included.routes)
            continue
        if not isinstance(route, APIRoute):
            continue
        scopes = scopes_of(route.dependant)
        if len(scopes) != 1:
            continue  # public (no token), or more than one scope: documented by hand if it ever happens
        (scope,) = scopes
        reads = set(route.methods or ()) <= {"GET", "HEAD"} or scope.endswith(":read")
        route.openapi_extra = {
            **(route.openapi_extra or {}),
            "x-changai-scope": scope,
            "x-changai-access": "read" if reads else "write",
        }


def mint_token(
    subject: str,
    scopes: list[str] | str,
    region: str = regions.REGION_ROOT,
    ttl_s: int = 3600,
    settings: Settings | None = None,
    unit: str | None = None,
) -> str:
    """An HS256 token for local use and tests (``unit``: a reform member unit's id, for its liaison)."""
    settings = settings or get_settings()
    now = int(time.time())
    claims = {
        "sub": subject,
        "scope": scopes if isinstance(scopes, str) else " ".join(scopes),
        "org": region,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_s,
    }
    if unit is not None:
        claims["unit"] = unit
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def main() -> None:
    parser = argparse.ArgumentParser(description="mint a local bearer token")
    sub = parser.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint")
    mint.add_argument("--sub", default="local-operator")
    mint.add_argument("--scope", action="append", required=True, help="repeatable, e.g. membership:write")
    mint.add_argument("--region", default=regions.REGION_ROOT)
    mint.add_argument("--ttl", type=int, default=3600 * 8)
    mint.add_argument("--unit", default=None, help="reform member unit id (a liaison officer's token)")
    args = parser.parse_args()
    print(mint_token(args.sub, args.scope, args.region, args.ttl, unit=args.unit))


if __name__ == "__main__":
    main()
