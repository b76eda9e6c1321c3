"""The embedded IAM of `make run` (docs/architecture.md §9): the local path is the production path.

A small HTTP server with a generated key pair that speaks the parts of the hub IAM's API the
orchestrator uses:
- `GET  /.well-known/jwks.json`        public keys (RS256 or ES256)
- `POST /api/v1/tokens/introspect`     {token} → the token's identity, 404 if unknown/invalid
- `POST /api/v1/tokens`                {accountId, customPermissions, expiresIn, new, ...} →
                                       {id, token}; refuses what the hub IAM cannot take
                                       (`refusal`: `forceNew`, an `inquirer` that is not an
                                       ObjectId, a `new` that is not a boolean); the tenant is
                                       the account's (`tenant` in the body: embedded only)
- `GET  /api/v1/tokens?token=…`        the hub's admin lookup of a token's id
- `DELETE /api/v1/tokens/{id}`         revoke
- `GET  /api/v1/users/{id}`            {_id, tenant} of an account this IAM knows (one it was
                                       told of with `add_user`, or minted a token for), else 404
Every endpoint but the JWKS wants `Authorization: Bearer <service token>`.

Run it in a thread (`EmbeddedIam(...).start()`) or as a process
(`python -m shared.local.embedded_iam`, which prints the IAM_* environment for the functions
as one JSON line, then serves).
`print_token` is the `orchestrator token` command's logic.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import secrets
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Self
from urllib.parse import parse_qs, urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jws
from jose.exceptions import JOSEError

from shared.adapters.iam import ADMIN_PERMISSION
from shared.clock import Clock, SystemClock

log = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "component-orchestrator"
DEFAULT_TOKEN_SECONDS = 3600
JWKS_PATH = "/.well-known/jwks.json"
TOKENS_PATH = "/api/v1/tokens"
INTROSPECT_PATH = "/api/v1/tokens/introspect"
USERS_PATH = "/api/v1/users"
OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str  # RS256 or ES256
    private_pem: str = field(repr=False)
    public_jwk: dict[str, Any]


def generate_key(alg: str = "RS256", kid: str | None = None) -> SigningKey:
    """A fresh key pair: RSA 2048 for RS256, P-256 for ES256."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    kid = kid or secrets.token_hex(8)
    public = jwk.construct(pem, alg).public_key().to_dict()
    public_jwk = {k: _jwk_value(v) for k, v in public.items()}
    public_jwk.update({"kid": kid, "use": "sig", "alg": alg})
    return SigningKey(kid=kid, alg=alg, private_pem=pem, public_jwk=public_jwk)


def _jwk_value(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _IssuedToken:
    id: str
    token: str = field(repr=False)
    subject: str
    tenant: str | None
    revoked: bool = False
    # An opaque token (as the hub's IAM issues them): the account document introspection
    # answers, and when it expires. None for a JWT.
    account: dict[str, Any] | None = None
    expires_at: float | None = None


def refusal(body: Mapping[str, Any]) -> str | None:
    """Why the hub's POST /api/v1/tokens (services/iam/src/routes/tokens.js) would not give a
    usable answer to this body; None if it would. `forceNew` is not read there (it reads `new`,
    so an existing token would be handed back); `inquirer` is stored as an ObjectId
    (models/schemas/token.js), anything else makes the route throw and never answer."""
    if "forceNew" in body:
        return "forceNew: not read by the hub's IAM (it reads `new`)"
    inquirer = body.get("inquirer")
    if inquirer is not None and not (isinstance(inquirer, str) and OBJECT_ID.fullmatch(inquirer)):
        return "inquirer: must be an account's ObjectId (the hub's IAM never answers otherwise)"
    if "new" in body and not isinstance(body["new"], bool):
        return "new: must be a boolean"
    return None


class EmbeddedIam:
    """A local IAM: signs tokens, serves JWKS, introspects, creates and revokes tokens."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        issuer: str | None = None,
        audience: str = DEFAULT_AUDIENCE,
        service_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        alg: str = "RS256",
        key: SigningKey | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.audience = audience
        self.service_token = service_token or secrets.token_urlsafe(32)
        self._issuer = issuer
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = [key or generate_key(alg)]
        self._published: set[str] = {self._keys[0].kid}
        self._issued: dict[str, _IssuedToken] = {}
        self._users: dict[str, str] = {}  # accounts added with add_user: id → tenant
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- addresses -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded IAM is not listening yet")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def issuer(self) -> str:
        return self._issuer or self.url

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    @property
    def introspect_url(self) -> str:
        return self.url + INTROSPECT_PATH

    def env(self, *, introspection: bool = False) -> dict[str, str]:
        """The IAM_* settings (README.md "Settings") for processes that talk to this IAM."""
        env = {
            "IAM_JWKS_URL": self.jwks_url,
            "IAM_ISSUER": self.issuer,
            "IAM_AUDIENCE": self.audience,
            "IAM_URL": self.url,
            "IAM_SERVICE_TOKEN": self.service_token,
        }
        if introspection:
            env["IAM_INTROSPECT_URL"] = self.introspect_url
        return env

    # --- keys ----------------------------------------------------------------------------------
    @property
    def active_key(self) -> SigningKey:
        with self._lock:
            return self._keys[-1]

    def rotate_key(self, alg: str = "RS256", *, publish: bool = True) -> SigningKey:
        """A new signing key becomes active; the old ones stay published (rotation)."""
        key = generate_key(alg)
        with self._lock:
            self._keys.append(key)
            if publish:
                self._published.add(key.kid)
        return key

    def publish(self, kid: str) -> None:
        with self._lock:
            self._published.add(kid)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [dict(k.public_jwk) for k in self._keys if k.kid in self._published]}

    # --- tokens --------------------------------------------------------------------------------
    def sign(self, claims: Mapping[str, Any], *, key: SigningKey | None = None) -> str:
        """Signs any claims with the active key (or `key`), kid in the header."""
        key = key or self.active_key
        return str(
            jws.sign(dict(claims), key.private_pem, headers={"kid": key.kid}, algorithm=key.alg)
        )

    def claims_for(
        self,
        *,
        tenant: str | None,
        sub: str,
        permissions: Iterable[str] = (),
        roles: Iterable[str] = (),
        expires_in: float | None = DEFAULT_TOKEN_SECONDS,
        token_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = int(self.clock.now())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "permissions": sorted(set(permissions)),
            "roles": sorted(set(roles)),
            "iat": now,
            "nbf": now,
            "jti": token_id or secrets.token_hex(12),
        }
        if tenant is not None:
            claims["tenant"] = tenant
        if expires_in is not None:
            claims["exp"] = now + int(expires_in)
        claims.update(extra or {})
        return claims

    def issue_token(
        self,
        tenant: str | None,
        sub: str,
        permissions: Iterable[str] = (),
        roles: Iterable[str] = (),
        *,
        expires_in: float | None = DEFAULT_TOKEN_SECONDS,
    ) -> str:
        """A token this IAM knows (introspection finds it, revoke ends it)."""
        token_id = secrets.token_hex(12)
        claims = self.claims_for(
            tenant=tenant,
            sub=sub,
            permissions=permissions,
            roles=roles,
            expires_in=expires_in,
            token_id=token_id,
        )
        token = self.sign(claims)
        with self._lock:
            self._issued[token_id] = _IssuedToken(token_id, token, sub, tenant)
        return token

    def issue_opaque_token(
        self,
        tenant: str | None,
        sub: str,
        permissions: Iterable[str] = (),
        roles: Iterable[str] = (),
        *,
        expires_in: float | None = DEFAULT_TOKEN_SECONDS,
        memberships: bool = False,
    ) -> str:
        """A token as the hub's IAM issues them: 128 random bytes, base64url, no claims in it.
        Introspection answers the account document (services/iam/src/util/tokens.js
        `getAccountData`): `_id`, `username`, `status`, `permissions`, `roles`, and the
        tenant at the top (`memberships: True`: in an active membership, as older IAMs did)."""
        token = base64.urlsafe_b64encode(secrets.token_bytes(128)).rstrip(b"=").decode()
        token_id = secrets.token_hex(12)
        account: dict[str, Any] = {
            "_id": sub,
            "username": f"{sub}@example.com",
            "status": "ACTIVE",
            "permissions": sorted(set(permissions)),
            "roles": [{"name": r, "permissions": []} for r in sorted(set(roles))],
        }
        if memberships:
            account["memberships"] = [
                {"tenant": "another-tenant", "active": False, "permissions": []},
                {"tenant": tenant, "active": True, "permissions": [], "roles": []},
            ]
        elif tenant is not None:
            account["tenant"] = tenant
        expires_at = None if expires_in is None else self.clock.now() + expires_in
        with self._lock:
            self._issued[token_id] = _IssuedToken(
                token_id, token, sub, tenant, account=account, expires_at=expires_at
            )
        return token

    def create_token(self, body: Mapping[str, Any]) -> dict[str, str]:
        """The hub's POST /api/v1/tokens: a token for an account, with custom permissions."""
        refused = refusal(body)
        if refused is not None:
            raise ValueError(refused)
        account = body.get("accountId")
        if not isinstance(account, str) or not account:
            raise ValueError("accountId: required")
        tenant = body.get("tenant") or self.tenant_of_user(account)
        permissions = [p for p in body.get("customPermissions") or [] if isinstance(p, str)]
        roles = [r for r in body.get("roles") or [] if isinstance(r, str)]
        extra = {"purpose": str(body.get("purpose") or "accountToken")}
        if isinstance(body.get("flowId"), str):
            extra["flowId"] = str(body["flowId"])
        token_id = secrets.token_hex(12)
        claims = self.claims_for(
            tenant=str(tenant) if tenant else None,
            sub=account,
            permissions=permissions,
            roles=roles,
            expires_in=_lifespan(body.get("expiresIn")),
            token_id=token_id,
            extra=extra,
        )
        token = self.sign(claims)
        with self._lock:
            self._issued[token_id] = _IssuedToken(token_id, token, account, claims.get("tenant"))
        return {"id": token_id, "token": token}

    def add_user(self, user_id: str, tenant: str) -> None:
        with self._lock:
            self._users[user_id] = tenant

    def tenant_of_user(self, user_id: str) -> str | None:
        with self._lock:
            if user_id in self._users:
                return self._users[user_id]
            tenants = {i.tenant for i in self._issued.values() if i.subject == user_id}
        tenants.discard(None)
        return str(next(iter(tenants))) if len(tenants) == 1 else None

    def revoke(self, token_id: str) -> bool:
        with self._lock:
            issued = self._issued.get(token_id)
            if issued is None:
                return False
            issued.revoked = True
            return True

    def token_id_of(self, token: str) -> str | None:
        with self._lock:
            for issued in self._issued.values():
                if issued.token == token:
                    return issued.id
        return None

    def is_revoked(self, token_id: str) -> bool:
        with self._lock:
            issued = self._issued.get(token_id)
            return issued is not None and issued.revoked

    def live_tokens(self) -> list[str]:
        """Ids of created tokens that are not revoked (tests: one per deployed flow)."""
        with self._lock:
            return [i.id for i in self._issued.values() if not i.revoked]

    def introspect(self, token: str) -> dict[str, Any] | None:
        """The identity of a token this IAM signed and did not revoke; None otherwise."""
        with self._lock:
            opaque = next(
                (i for i in self._issued.values() if i.account is not None and i.token == token),
                None,
            )
        if opaque is not None:
            assert opaque.account is not None
            expired = opaque.expires_at is not None and self.clock.now() >= opaque.expires_at
            return None if opaque.revoked or expired else dict(opaque.account)
        try:
            header = jws.get_unverified_header(token)
        except JOSEError:
            return None
        with self._lock:
            key = next((k for k in self._keys if k.kid == header.get("kid")), None)
        if key is None or header.get("alg") != key.alg:
            return None
        try:
            claims = json.loads(jws.verify(token, key.public_jwk, algorithms=[key.alg]))
        except (JOSEError, ValueError):
            return None
        if not isinstance(claims, dict):
            return None
        exp = claims.get("exp")
        if isinstance(exp, int | float) and self.clock.now() >= exp:
            return None
        if isinstance(claims.get("jti"), str) and self.is_revoked(claims["jti"]):
            return None
        return {"active": True, **claims}

    # --- HTTP ----------------------------------------------------------------------------------
    def bind(self) -> None:
        """Opens the socket without serving yet, so `url` is known before serving."""
        self._server = ThreadingHTTPServer((self._host, self._port), _handler_for(self))
        self._server.daemon_threads = True
        self._port = int(self._server.server_address[1])  # a restart keeps the same address

    def start(self) -> Self:
        """Starts serving in a daemon thread; returns self."""
        self.bind()
        assert self._server is not None
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05),
            name="embedded-iam",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening: connections are refused until `start` again (same port)."""
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def serve_bound(self) -> None:
        """Process mode: serve on the calling thread until interrupted."""
        assert self._server is not None, "bind() first"
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def __enter__(self) -> EmbeddedIam:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def before_request(self, method: str, path: str) -> int | None:
        """Hook for fakes: a status to answer instead of serving the request."""
        return None

    def authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self.service_token}"
        return header is not None and secrets.compare_digest(header.encode(), expected.encode())


def _lifespan(value: object) -> float | None:
    """The hub's expiresIn: -1 = persistent, seconds, or '30s' / '5m' / '1h' / '1d'."""
    if value is None:
        return DEFAULT_TOKEN_SECONDS
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None if value < 0 else float(value)
    match = re.fullmatch(r"(\d+)([smhd])", str(value).strip())
    if not match:
        raise ValueError("expiresIn: seconds, -1 or a duration like 5m")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _handler_for(iam: EmbeddedIam) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            # The default writes request lines (with query strings) to stderr: keep them out.
            log.debug("embedded IAM: %s %s", self.command, urlsplit(self.path).path)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") or "/"
            body = self._read_body()
            fault = iam.before_request(method, path)
            if fault is not None:
                self._reply(fault, {"error": "unavailable"})
                return
            if method == "GET" and path == JWKS_PATH:
                self._reply(200, iam.jwks())
                return
            if not iam.authorized(self.headers.get("Authorization")):
                self._reply(401, {"error": "unauthorized"})
                return
            if method == "POST" and path == INTROSPECT_PATH:
                token = body.get("token") if isinstance(body, dict) else None
                found = iam.introspect(token) if isinstance(token, str) else None
                if found:
                    self._reply(200, found)
                else:
                    self._reply(404, {"error": "not found"})
            elif method == "POST" and path == TOKENS_PATH:
                try:
                    self._reply(200, iam.create_token(body if isinstance(body, dict) else {}))
                except ValueError as exc:
                    self._reply(400, {"error": str(exc)})
            elif method == "GET" and path.startswith(USERS_PATH + "/"):
                user_id = path.removeprefix(USERS_PATH + "/")
                tenant = iam.tenant_of_user(user_id)
                if tenant is None:
                    self._reply(404, {"error": "not found"})
                else:
                    self._reply(200, {"_id": user_id, "tenant": tenant})
            elif method == "GET" and path == TOKENS_PATH:
                token = parse_qs(parts.query).get("token", [""])[0]
                token_id = iam.token_id_of(token)
                self._reply(200, [{"_id": token_id}] if token_id else [])
            elif method == "DELETE" and path.startswith(TOKENS_PATH + "/"):
                revoked = iam.revoke(path.removeprefix(TOKENS_PATH + "/"))
                if revoked:
                    self._reply(200, {})
                else:
                    self._reply(404, {"error": "not found"})
            else:
                self._reply(404, {"error": "not found"})

        def _read_body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                return None

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


# --- `orchestrator token` ----------------------------------------------------------------------
def print_token(
    tenant: str,
    *,
    sub: str = "dev-user",
    permissions: Sequence[str] = ("flows.control",),
    admin: bool = False,
    expires_in: int = DEFAULT_TOKEN_SECONDS,
    iam_url: str,
    service_token: str,
    out: IO[str] | None = None,
    timeout: float = 5.0,
) -> str:
    """Asks the (embedded) IAM for a token for `sub` in `tenant`, prints and returns it."""
    body = {
        "accountId": sub,
        "tenant": tenant,
        "customPermissions": [*permissions, ADMIN_PERMISSION] if admin else list(permissions),
        "expiresIn": expires_in,
        "purpose": "manual",
    }
    response = requests.post(
        iam_url.rstrip("/") + TOKENS_PATH,
        json=body,
        headers={"Authorization": f"Bearer {service_token}"},
        timeout=timeout,
    )
    if response.status_code != 200:
        raise RuntimeError(f"IAM at {iam_url} refused to issue a token ({response.status_code})")
    token = str(response.json()["token"])
    print(token, file=out or sys.stdout)
    return token


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
    """Process mode: prints the IAM_* settings as one JSON line (without the service token,
    which the parent passed in), then serves until killed."""
    parser = argparse.ArgumentParser(prog="python -m shared.local.embedded_iam")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--audience", default=DEFAULT_AUDIENCE)
    parser.add_argument("--alg", choices=("RS256", "ES256"), default="RS256")
    args = parser.parse_args(argv)
    service_token = (env if env is not None else os.environ).get("IAM_SERVICE_TOKEN")
    if not service_token:
        parser.error("IAM_SERVICE_TOKEN: required in the environment (the token callers present)")
    iam = EmbeddedIam(
        audience=args.audience,
        service_token=service_token,
        host=args.host,
        port=args.port,
        alg=args.alg,
    )
    iam.bind()
    settings = iam.env()
    del settings["IAM_SERVICE_TOKEN"]
    print(json.dumps(settings), flush=True)
    iam.serve_bound()


if __name__ == "__main__":
    main()
