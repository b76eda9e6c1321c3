"""The IAM service seen from the orchestrator (docs/architecture.md §8): verify tokens, manage flow
tokens.

`IamVerifier` checks an IAM token either locally against the IAM's JWKS (RS256 or ES256 only;
signature, `exp`, `nbf`, `iss`, `aud`) or by asking the IAM at `IAM_INTROSPECT_URL` (the hub's
`POST /api/v1/tokens/introspect`), which also sees revoked tokens. The hub's own tokens are
opaque (random base64url, services/iam/src/util/tokens.js `sign`): with only
`IAM_INTROSPECT_URL` every token is introspected; with it and a complete JWKS setting
(`IAM_JWKS_URL`, `IAM_ISSUER`, `IAM_AUDIENCE`) a JWT is checked against the JWKS and any other
token introspected. The answer is the hub's account document
(`_id`, `tenant` or the active one of `memberships`, `permissions`, `roles`); the permission
`all` makes an admin, as in the hub (services/iam/src/util/auth.js `hasPermissions`; the role
`ADMIN` is still read for one release).

`IamClient` creates and revokes flow tokens with the hub's `POST /api/v1/tokens` and
`DELETE /api/v1/tokens/{id}`, with exactly the body services/iam/src/routes/tokens.js reads
(`accountId`, `expiresIn`, `description`, `customPermissions`, `new`; no `inquirer`, so the IAM
takes the service account's id, an ObjectId as its token schema wants).

Every failure is one of ours: a bad token → Unauthorized (401); the IAM unreachable or answering
5xx → TemporaryError (503), so the broker retries and nothing is lost. Token values never appear
in an error message.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote

import requests
from jose import jwk, jws
from jose.exceptions import JOSEError

from shared.clock import Clock
from shared.errors import PermanentError, TemporaryError, Unauthorized
from shared.settings import Settings, SettingsError

# Asymmetric only: an HS* token could be signed with the IAM's *public* key (alg confusion).
ALGORITHM_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
# The hub's admin: the permission `all` (services/iam/src/access-control/permissions.js).
ADMIN_PERMISSION = "all"
# Deprecated: read beside `all` for one release (CHANGELOG 0.2.0), then dropped.
ADMIN_ROLE = "ADMIN"
# What the hub's POST /api/v1/tokens reads from its body (services/iam/src/routes/tokens.js);
# anything else is ignored there, so sending it is a bug (e.g. `forceNew`, read as `new`).
HUB_TOKEN_FIELDS = frozenset(
    {"accountId", "expiresIn", "inquirer", "customPermissions", "purpose", "description", "new"}
)
# The hub's IAM picks how it checks our service token from this header (basic = its own).
AUTH_TYPE_HEADER = {"x-auth-type": "basic"}
NBF_LEEWAY_SECONDS = 5.0
DEFAULT_TIMEOUT_SECONDS = 5.0
JWKS_TTL_SECONDS = 300.0
# An unknown kid refreshes the key set, but not more often than this: a stream of tokens with
# made-up kids must not turn into a stream of JWKS downloads.
JWKS_MIN_REFRESH_SECONDS = 5.0
INTROSPECTION_TTL_SECONDS = 30.0
INTROSPECTION_CACHE_SIZE = 1024
# What a step may do with its flow token: read its own credentials from the secret service
# (the same single permission the original orchestrator gave its flow tokens).
STEP_PERMISSIONS = ("secrets.secret.readRaw",)
ORCHESTRATOR_NAME = "component-orchestrator"


@dataclass(frozen=True)
class IamIdentity:
    """Who a verified IAM token speaks for."""

    subject: str
    tenant: str | None
    permissions: frozenset[str]
    roles: frozenset[str]
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return is_admin(self.permissions, self.roles)


def is_admin(permissions: Collection[str], roles: Collection[str]) -> bool:
    """The hub's admin holds the permission `all`; the role `ADMIN` is read for one release."""
    return ADMIN_PERMISSION in permissions or ADMIN_ROLE in roles


def _active_membership(claims: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The hub's `memberships` (older IAM versions, lib/iam-utils `getUserData`): the active
    one, else the only one."""
    memberships = claims.get("memberships")
    if not isinstance(memberships, list):
        return None
    found = [m for m in memberships if isinstance(m, Mapping)]
    active = [m for m in found if m.get("active") is True]
    if active:
        return active[0]
    return found[0] if len(found) == 1 else None


def identity_from_claims(claims: Mapping[str, Any]) -> IamIdentity:
    """Maps JWT claims or an introspection answer (hub or RFC 7662 shape) to an identity."""
    subject = claims.get("sub") or claims.get("_id") or claims.get("userid") or claims.get("id")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("token names no subject")
    tenant = claims.get("tenant")
    context = claims.get("currentContext")
    membership = _active_membership(claims)
    if not tenant and membership is not None:
        tenant = membership.get("tenant")
    if not tenant and isinstance(context, Mapping):
        tenant = context.get("tenant")
    permissions = set(_strings(claims.get("permissions")))
    for part in (context, membership):
        if isinstance(part, Mapping):
            permissions |= set(_strings(part.get("permissions")))
    if isinstance(claims.get("scope"), str):
        permissions |= set(str(claims["scope"]).split())
    roles = set(_strings(claims.get("roles")))
    for role in _role_documents(claims.get("roles")):
        permissions |= set(_strings(role.get("permissions")))
    if membership is not None:
        roles |= set(_strings(membership.get("roles")))
    if isinstance(claims.get("role"), str):
        roles.add(str(claims["role"]))
    if claims.get("isAdmin") is True:
        roles.add(ADMIN_ROLE)
    exp = claims.get("exp")
    return IamIdentity(
        subject=subject,
        tenant=str(tenant) if tenant else None,
        permissions=frozenset(permissions),
        roles=frozenset(roles),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )


def _role_documents(value: object) -> list[Mapping[str, Any]]:
    """Populated hub roles (`{name, permissions}`) grant their permissions."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple | set | frozenset):
        out = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
                out.append(str(item["name"]))  # hub roles may be objects with a name
        return out
    return []


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts whose first is a JSON object header; the hub's opaque tokens are
    one base64url string without dots."""
    if token.count(".") != 2:
        return False
    try:
        header = jws.get_unverified_header(token)
    except JOSEError:
        return False
    return isinstance(header, dict) and "alg" in header


def _fingerprint(token: str) -> str:
    """Cache key for a token: the token itself is never kept as a key."""
    return hashlib.sha256(token.encode()).hexdigest()


class IamVerifier:
    """Verifies IAM tokens by JWKS or by introspection; thread-safe, one per process."""

    def __init__(
        self,
        *,
        clock: Clock,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        introspect_url: str | None = None,
        service_token: str | None = None,
        session: requests.Session | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        jwks_ttl: float = JWKS_TTL_SECONDS,
        introspection_ttl: float = INTROSPECTION_TTL_SECONDS,
    ) -> None:
        problems = []
        if not jwks_url and not introspect_url:
            problems.append("IAM_JWKS_URL: required (or IAM_INTROSPECT_URL)")
        if jwks_url and not introspect_url:
            if not issuer:
                problems.append("IAM_ISSUER: required to verify tokens against IAM_JWKS_URL")
            if not audience:
                problems.append("IAM_AUDIENCE: required to verify tokens against IAM_JWKS_URL")
        if problems:
            raise SettingsError("invalid IAM settings: " + "; ".join(problems), problems=problems)
        self._clock = clock
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._introspect_url = introspect_url
        self._service_token = service_token
        self._session = session or requests.Session()
        self._timeout = timeout
        self._jwks_ttl = jwks_ttl
        self._introspection_ttl = introspection_ttl
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, Any]] = {}
        self._keys_fetched_at: float | None = None
        self._introspected: OrderedDict[str, tuple[float, IamIdentity]] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: Settings, clock: Clock, session: requests.Session | None = None
    ) -> IamVerifier:
        return cls(
            clock=clock,
            jwks_url=settings.iam_jwks_url,
            issuer=settings.iam_issuer,
            audience=settings.iam_audience,
            introspect_url=settings.iam_introspect_url,
            service_token=settings.iam_service_token,
            session=session,
        )

    @property
    def mode(self) -> str:
        return "introspection" if self._introspect_url else "jwks"

    def verify(self, token: str) -> IamIdentity:
        """The identity the token speaks for; Unauthorized if it is not a valid IAM token."""
        if not token:
            raise Unauthorized("missing IAM token")
        # Introspection alone is authoritative: it also knows revoked tokens. Beside a JWKS it
        # checks what the JWKS cannot: the hub's opaque tokens.
        jwks_ready = bool(self._jwks_url and self._issuer and self._audience)
        if self._introspect_url and not (jwks_ready and looks_like_jwt(token)):
            return self._introspect(token)
        return self._verify_jwt(token)

    # --- JWKS ----------------------------------------------------------------------------------
    def _verify_jwt(self, token: str) -> IamIdentity:
        try:
            header = jws.get_unverified_header(token)
        except JOSEError as exc:
            raise Unauthorized("IAM token is malformed") from exc
        alg = header.get("alg")
        if alg not in ALGORITHM_KEY_TYPES:
            raise Unauthorized("IAM token algorithm must be RS256 or ES256")
        key = self._key_for(header.get("kid"), str(alg))
        try:
            payload = jws.verify(token, key, algorithms=[alg])
            claims = json.loads(payload)
        except (JOSEError, ValueError) as exc:
            raise Unauthorized("IAM token signature is invalid") from exc
        if not isinstance(claims, dict):
            raise Unauthorized("IAM token claims are not an object")
        self._check_claims(claims)
        return identity_from_claims(claims)

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.now()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise Unauthorized("IAM token has no expiry")
        if now >= exp:
            raise Unauthorized("IAM token has expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int | float) or now < nbf - NBF_LEEWAY_SECONDS):
            raise Unauthorized("IAM token is not valid yet")
        if claims.get("iss") != self._issuer:
            raise Unauthorized("IAM token has the wrong issuer")
        audiences = claims.get("aud")
        if isinstance(audiences, str):
            audiences = [audiences]
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise Unauthorized("IAM token is not meant for this audience")

    def _key_for(self, kid: object, alg: str) -> Any:
        with self._lock:
            now = self._clock.now()
            fetched_now = False
            if self._keys_fetched_at is None or now - self._keys_fetched_at >= self._jwks_ttl:
                self._fetch_jwks(now)
                fetched_now = True
            found = self._select(kid, alg)
            if found is None and not fetched_now:
                assert self._keys_fetched_at is not None
                if now - self._keys_fetched_at >= JWKS_MIN_REFRESH_SECONDS:
                    self._fetch_jwks(now)  # the IAM may have rotated its keys: look once more
                    found = self._select(kid, alg)
        if found is None:
            raise Unauthorized("IAM token is signed with an unknown key")
        if found.get("alg") not in (None, alg):
            raise Unauthorized("IAM token algorithm does not match its key")
        try:
            return jwk.construct(found, alg)
        except JOSEError as exc:
            raise Unauthorized("IAM key for this token is unusable") from exc

    def _select(self, kid: object, alg: str) -> dict[str, Any] | None:
        wanted_type = ALGORITHM_KEY_TYPES[alg]
        if isinstance(kid, str) and kid:
            key = self._keys.get(kid)
            return key if key is not None and key.get("kty") == wanted_type else None
        # No kid: acceptable only when exactly one key could have signed it.
        candidates = [k for k in self._keys.values() if k.get("kty") == wanted_type]
        return candidates[0] if len(candidates) == 1 else None

    def _fetch_jwks(self, now: float) -> None:
        assert self._jwks_url is not None
        body = _get_json(self._session, self._jwks_url, self._timeout, what="IAM JWKS")
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list):
            raise TemporaryError("IAM JWKS answer has no key list")
        usable: dict[str, dict[str, Any]] = {}
        for index, key in enumerate(keys):
            if not isinstance(key, dict) or key.get("use", "sig") != "sig":
                continue
            if key.get("kty") not in ALGORITHM_KEY_TYPES.values():
                continue
            usable[str(key.get("kid") or f"#{index}")] = key
        self._keys = usable
        self._keys_fetched_at = now

    # --- introspection -------------------------------------------------------------------------
    def _introspect(self, token: str) -> IamIdentity:
        now = self._clock.now()
        fingerprint = _fingerprint(token)
        with self._lock:
            cached = self._introspected.get(fingerprint)
            if cached is not None and now < cached[0]:
                return cached[1]
        identity = self._ask_iam(token)
        if identity.expires_at is not None and now >= identity.expires_at:
            raise Unauthorized("IAM token has expired")
        until = now + self._introspection_ttl
        if identity.expires_at is not None:
            until = min(until, identity.expires_at)
        with self._lock:
            self._introspected[fingerprint] = (until, identity)
            self._introspected.move_to_end(fingerprint)
            while len(self._introspected) > INTROSPECTION_CACHE_SIZE:
                self._introspected.popitem(last=False)
        return identity

    def _ask_iam(self, token: str) -> IamIdentity:
        assert self._introspect_url is not None
        try:
            response = self._session.post(
                self._introspect_url,
                json={"token": token},
                headers={**_bearer(self._service_token), **AUTH_TYPE_HEADER},
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            raise TemporaryError(f"IAM introspection unreachable: {type(exc).__name__}") from exc
        status = response.status_code
        if status in (400, 404, 410):
            raise Unauthorized("IAM does not know this token")
        if status in (401, 403):
            # The IAM refused *our* service token: a configuration problem, not the caller's.
            # 503 keeps the event for a retry instead of dropping it as unauthorized.
            raise TemporaryError(f"IAM refused the orchestrator's service token ({status})")
        if status != 200:
            raise TemporaryError(f"IAM introspection answered {status}")
        try:
            body = response.json()
        except ValueError as exc:
            raise TemporaryError("IAM introspection answer is not JSON") from exc
        if not isinstance(body, dict):
            raise TemporaryError("IAM introspection answer is not an object")
        if body.get("active") is False:
            raise Unauthorized("IAM token is not active")
        return identity_from_claims(body)


class IamClient:
    """Creates and revokes flow tokens in the IAM (the hub's token API) and says which tenant
    a user belongs to (the hub's user API)."""

    def __init__(
        self,
        *,
        base_url: str,
        service_token: str | None,
        session: requests.Session | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._service_token = service_token
        self._session = session or requests.Session()
        self._timeout = timeout

    @classmethod
    def from_settings(
        cls, settings: Settings, session: requests.Session | None = None
    ) -> IamClient:
        if not settings.iam_url:
            raise SettingsError("IAM_URL: required to create flow tokens", problems=["IAM_URL"])
        return cls(
            base_url=settings.iam_url, service_token=settings.iam_service_token, session=session
        )

    def create_flow_token(self, flow_id: str, owner_id: str, tenant: str) -> tuple[str, str]:
        """A token for the flow's owner with only what a step needs: (token id, token).

        The body is the original orchestrator's (lib/iam-utils `createToken`, called by
        services/component-orchestrator/src/dao/TokensDao.js): the IAM takes the tenant from
        the account (`tenant` is the caller's check, not sent) and the inquirer from our
        service token; `new: true` so that it never hands back an existing token."""
        del tenant  # the IAM knows the account's tenant
        body = {
            "accountId": owner_id,
            "expiresIn": -1,  # lives as long as the flow: revoked on flow.stopping
            "description": f"Created by {ORCHESTRATOR_NAME} for flow {flow_id}",
            "customPermissions": list(STEP_PERMISSIONS),
            "new": True,
        }
        response = self._call("POST", "/api/v1/tokens", json=body)
        if response.status_code not in (200, 201):
            _raise_for(response, "create a flow token")
        answer = _json_object(response, "token creation")
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise TemporaryError("IAM token creation answered without a token")
        token_id = answer.get("id") or answer.get("_id") or self._find_token_id(token)
        return str(token_id), token

    def tenant_of_user(self, user_id: str) -> str | None:
        """The tenant of a user account (the hub's GET /api/v1/users/{id}); None if unknown."""
        response = self._call("GET", f"/api/v1/users/{quote(user_id, safe='')}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            _raise_for(response, "look up a user")
        answer = _json_object(response, "user lookup")
        tenant = answer.get("tenant")
        return str(tenant) if isinstance(tenant, str) and tenant else None

    def revoke(self, token_id: str) -> None:
        """Deletes a token; one that is already gone counts as revoked."""
        response = self._call("DELETE", f"/api/v1/tokens/{quote(token_id, safe='')}")
        if response.status_code not in (200, 202, 204, 404):
            _raise_for(response, "revoke a flow token")

    def _find_token_id(self, token: str) -> str:
        # Older hub versions answer only {token}; the admin listing finds its id.
        response = self._call("GET", "/api/v1/tokens", params={"token": token})
        if response.status_code != 200:
            _raise_for(response, "look up a created token")
        try:
            docs = response.json()
        except ValueError as exc:
            raise TemporaryError("IAM token listing is not JSON") from exc
        for doc in docs if isinstance(docs, list) else []:
            if isinstance(doc, dict) and (doc.get("_id") or doc.get("id")):
                return str(doc.get("_id") or doc.get("id"))
        raise TemporaryError("IAM did not say the id of the token it created")

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session.request(
                method,
                self._base + path,
                headers={**_bearer(self._service_token), **AUTH_TYPE_HEADER},
                timeout=self._timeout,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise TemporaryError(f"IAM unreachable: {type(exc).__name__}") from exc


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _get_json(session: requests.Session, url: str, timeout: float, *, what: str) -> Any:
    try:
        response = session.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise TemporaryError(f"{what} unreachable: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise TemporaryError(f"{what} answered {response.status_code}")
    try:
        return response.json()
    except ValueError as exc:
        raise TemporaryError(f"{what} answer is not JSON") from exc


def _json_object(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise TemporaryError(f"IAM {what} answer is not JSON") from exc
    if not isinstance(body, dict):
        raise TemporaryError(f"IAM {what} answer is not an object")
    return body


def _raise_for(response: requests.Response, action: str) -> NoReturn:
    status = response.status_code
    if status >= 500 or status in (401, 408, 429):
        # 401 here means our service token is refused: retry once it is fixed, keep the event.
        raise TemporaryError(f"IAM could not {action} ({status})")
    raise PermanentError(f"IAM refused to {action} ({status})")
