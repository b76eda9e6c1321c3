"""The fake IAM for tests: the embedded IAM on a free port, plus what only tests need.

- `forge(...)`: tokens with arbitrary claims, keys, algorithms and headers (alg none, HS256
  signed with the public key, unknown kid, foreign key, ...);
- `hits[path]`: requests per path (to see the JWKS refreshed exactly once);
- `fail(status, times)`: the next requests answer `status`; `down()` / `up()`: refuse
  connections / listen again on the same port;
- `token_bodies`: every POST /api/v1/tokens body; a body with a field the hub's IAM does not
  read (shared.adapters.iam.HUB_TOKEN_FIELDS) is refused with 400, beside what the embedded
  IAM already refuses as the hub would (`refusal`: `forceNew`, a non-ObjectId `inquirer`);
- `issue_opaque_token(...)`: the hub's opaque tokens, introspected as account documents.

Fixture `iam` (per test, FakeClock-driven by the `clock` fixture). Production never imports this.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from jose import jws

from shared.adapters.iam import HUB_TOKEN_FIELDS
from shared.clock import Clock
from shared.local.embedded_iam import EmbeddedIam, SigningKey, generate_key, refusal


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_KEYS: dict[str, SigningKey] = {}


def _shared_key(alg: str) -> SigningKey:
    """One key pair per algorithm for the whole run: generating RSA keys per test is slow."""
    if alg not in _KEYS:
        _KEYS[alg] = generate_key(alg)
    return _KEYS[alg]


class FakeIam(EmbeddedIam):
    def __init__(self, clock: Clock, *, alg: str = "RS256", **options: Any) -> None:
        super().__init__(clock=clock, alg=alg, key=_shared_key(alg), **options)
        self.hits: dict[str, int] = {}
        self.token_bodies: list[dict[str, Any]] = []
        self._failures: list[list[int]] = []  # [status, times left]
        self._fault_lock = threading.Lock()

    def create_token(self, body: Mapping[str, Any]) -> dict[str, str]:
        with self._fault_lock:
            self.token_bodies.append(dict(body))
        refused = refusal(body)
        if refused is not None:
            raise ValueError(refused)
        unread = sorted(set(body) - HUB_TOKEN_FIELDS)
        if unread:
            raise ValueError(f"{', '.join(unread)}: not read by the hub's IAM")
        return super().create_token(body)

    # --- failure injection ---------------------------------------------------------------------
    def fail(self, status: int, times: int = 1_000_000) -> None:
        with self._fault_lock:
            self._failures.append([status, times])

    def heal(self) -> None:
        with self._fault_lock:
            self._failures.clear()

    def down(self) -> None:
        self.stop()

    def up(self) -> None:
        self.start()

    def before_request(self, method: str, path: str) -> int | None:
        with self._fault_lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            for failure in self._failures:
                if failure[1] > 0:
                    failure[1] -= 1
                    return failure[0]
        return None

    @property
    def jwks_hits(self) -> int:
        return self.hits.get("/.well-known/jwks.json", 0)

    # --- tokens of every kind ------------------------------------------------------------------
    def token(
        self,
        tenant: str | None = "acme",
        sub: str = "alice",
        permissions: tuple[str, ...] = ("flows.control",),
        roles: tuple[str, ...] = (),
        **claim_overrides: Any,
    ) -> str:
        """A well-formed token signed with the published key; override any claim."""
        claims = self.claims_for(tenant=tenant, sub=sub, permissions=permissions, roles=roles)
        claims.update(claim_overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return self.sign(claims)

    def forge(
        self,
        claims: Mapping[str, Any],
        *,
        key: SigningKey | None = None,
        header: Mapping[str, Any] | None = None,
        alg: str | None = None,
        secret: str | bytes | None = None,
    ) -> str:
        """Signs `claims` however a test wants: another key, an HMAC secret, extra headers."""
        key = key or self.active_key
        headers = {"kid": key.kid, **(header or {})}
        if secret is not None:
            # By hand: jose (rightly) refuses to HMAC with a PEM, the attack this models.
            return self._hmac_token(claims, headers, secret)
        return str(
            jws.sign(dict(claims), key.private_pem, headers=headers, algorithm=alg or key.alg)
        )

    @staticmethod
    def _hmac_token(
        claims: Mapping[str, Any], headers: Mapping[str, Any], secret: str | bytes
    ) -> str:
        header = {"alg": "HS256", "typ": "JWT", **headers}
        signing_input = ".".join(
            (_b64(json.dumps(header).encode()), _b64(json.dumps(dict(claims)).encode()))
        )
        raw = secret.encode() if isinstance(secret, str) else secret
        signature = hmac.new(raw, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(signature)

    def unsigned(self, claims: Mapping[str, Any]) -> str:
        """`alg: none`: header and claims, empty signature."""
        header = {"alg": "none", "typ": "JWT", "kid": self.active_key.kid}
        return ".".join(
            (_b64(json.dumps(header).encode()), _b64(json.dumps(dict(claims)).encode()), "")
        )

    def public_pem(self) -> str:
        """The published key as PEM text: what an alg-confusion attacker would HMAC with."""
        from jose import jwk

        return str(jwk.construct(self.active_key.public_jwk, self.active_key.alg).to_pem().decode())

    def stranger_key(self, alg: str = "RS256") -> SigningKey:
        """A key pair this IAM never published."""
        return generate_key(alg, kid=self.active_key.kid)


@pytest.fixture
def iam(clock: Clock) -> Iterator[FakeIam]:
    fake = FakeIam(clock).start()
    try:
        yield fake
    finally:
        fake.stop()
