"""Authentication and roles.

Bound to a loopback address the server may run **open** (no credentials; every caller acts as
the ``local`` admin). Bound to any other address it refuses to start without an auth
configuration: a JSON file

.. code-block:: json

    {
      "users": {"alice": {"role": "admin", "password": "scrypt$16384$8$1$<salt>$<hash>"}},
      "tokens": [{"name": "ci-bot", "role": "annotator", "sha256": "<hex digest of the token>"}]
    }

Passwords are stored as scrypt hashes (`hash_password`), API tokens as SHA-256 digests
(`new_token`); neither is ever stored in clear. Clients authenticate with

- ``Authorization: Bearer <token>`` — an API token, or a session token from ``POST /api/v1/auth/login``;
- ``Authorization: Basic <user:password>``;
- ``?access_token=<token>`` — for WebSocket/EventSource and links, which cannot set headers.

Roles (each includes the ones before it):

- ``annotator``: view everything, run inference and interactive sessions, save draft labels, evaluate;
- ``reviewer``: also mark labels final (or save them final), upload images, start batch inference
  and evaluation jobs;
- ``admin``: also train, delete images, set the label schema, select/roll back model versions,
  cancel anyone's job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES: tuple[str, ...] = ("annotator", "reviewer", "admin")
ROLE_RANK: dict[str, int] = {r: i for i, r in enumerate(ROLES)}

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


class AuthConfigError(ValueError):
    """The auth configuration file is missing, unreadable or invalid."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt hash of ``password``: ``scrypt$N$r$p$<salt b64>$<hash b64>``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh API token and the SHA-256 digest to put in the auth file."""
    token = "sl_" + secrets.token_urlsafe(32)
    return token, token_digest(token)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: str  # "open" | "token" | "password" | "session"

    def has(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "via": self.via}


OPEN_PRINCIPAL = Principal("local", "admin", "open")


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class AuthConfig:
    users: dict[str, tuple[str, str]]  # name -> (role, password hash)
    tokens: dict[str, tuple[str, str]]  # sha256 -> (name, role)

    @classmethod
    def load(cls, path: str | Path) -> AuthConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise AuthConfigError(f"{path}: cannot read the auth file ({exc.strerror or exc})") from exc
        except json.JSONDecodeError as exc:
            raise AuthConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "auth config") -> AuthConfig:
        if not isinstance(data, dict):
            raise AuthConfigError(f"{where}: expected an object with 'users' and/or 'tokens'")
        users: dict[str, tuple[str, str]] = {}
        raw_users = data.get("users") or {}
        if not isinstance(raw_users, dict):
            raise AuthConfigError(f"{where}: 'users' must map user names to {{role, password}}")
        for name, u in raw_users.items():
            if not isinstance(u, dict) or u.get("role") not in ROLES:
                raise AuthConfigError(f"{where}: user {name!r} needs a role among {', '.join(ROLES)}")
            pw = u.get("password")
            if not isinstance(pw, str) or not pw.startswith("scrypt$"):
                raise AuthConfigError(
                    f"{where}: user {name!r} needs a 'password' scrypt hash (make one with `segloop serve --hash-password`)"
                )
            users[str(name)] = (u["role"], pw)
        tokens: dict[str, tuple[str, str]] = {}
        raw_tokens = data.get("tokens") or []
        if not isinstance(raw_tokens, list):
            raise AuthConfigError(f"{where}: 'tokens' must be a list of {{name, role, sha256}}")
        for i, t in enumerate(raw_tokens):
            if not isinstance(t, dict) or t.get("role") not in ROLES:
                raise AuthConfigError(f"{where}: token {i} needs a role among {', '.join(ROLES)}")
            digest = t.get("sha256")
            if not isinstance(digest, str) or len(digest) != 64:
                raise AuthConfigError(
                    f"{where}: token {i} needs 'sha256', the hex SHA-256 of the token (`segloop serve --new-token`)"
                )
            tokens[digest.lower()] = (str(t.get("name") or f"token-{i}"), t["role"])
        if not users and not tokens:
            raise AuthConfigError(f"{where}: defines no users and no tokens")
        return cls(users, tokens)


class Authenticator:
    """Checks credentials of requests; keeps login sessions in memory."""

    def __init__(self, config: AuthConfig | None, *, session_seconds: float = 12 * 3600) -> None:
        self.config = config
        self.session_seconds = session_seconds
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[Principal, float]] = {}  # digest -> (principal, expiry)
        self._verified: dict[str, tuple[Principal, float]] = {}  # cache of checked Basic credentials

    @property
    def open(self) -> bool:
        return self.config is None

    def login(self, username: str, password: str) -> tuple[str, Principal, float]:
        principal = self._check_password(username, password)
        token = "ss_" + secrets.token_urlsafe(32)
        expiry = time.time() + self.session_seconds
        with self._lock:
            self._sessions[token_digest(token)] = (principal, expiry)
        return token, Principal(principal.name, principal.role, "session"), expiry

    def logout(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token_digest(token), None)

    def authenticate(self, authorization: str | None, query_token: str | None) -> Principal:
        if self.config is None:
            return OPEN_PRINCIPAL
        if authorization:
            scheme, _, value = authorization.partition(" ")
            scheme = scheme.lower()
            value = value.strip()
            if scheme == "bearer" and value:
                return self._check_token(value)
            if scheme == "basic" and value:
                try:
                    user, _, pw = base64.b64decode(value, validate=True).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise AuthError(401, "unauthorized", "malformed Basic credentials") from None
                return self._check_password(user, pw)
            raise AuthError(401, "unauthorized", "unsupported Authorization scheme (use Bearer or Basic)")
        if query_token:
            return self._check_token(query_token)
        raise AuthError(401, "unauthorized", "authentication required (Bearer token, Basic credentials or access_token)")

    def _check_token(self, token: str) -> Principal:
        assert self.config is not None
        digest = token_digest(token)
        hit = self.config.tokens.get(digest)
        if hit is not None:
            return Principal(hit[0], hit[1], "token")
        with self._lock:
            sess = self._sessions.get(digest)
            if sess is not None and sess[1] > time.time():
                return sess[0]
            if sess is not None:
                self._sessions.pop(digest, None)
        raise AuthError(401, "unauthorized", "invalid or expired token")

    def _check_password(self, user: str, password: str) -> Principal:
        assert self.config is not None
        key = hashlib.sha256(f"{user}\x00{password}".encode()).hexdigest()
        now = time.time()
        with self._lock:
            cached = self._verified.get(key)
            if cached is not None and cached[1] > now:
                return cached[0]
        entry = self.config.users.get(user)
        # verify against a dummy hash for unknown users too, so timing does not reveal names
        stored = entry[1] if entry else _DUMMY_HASH
        if not verify_password(password, stored) or entry is None:
            raise AuthError(401, "unauthorized", "wrong user name or password")
        principal = Principal(user, entry[0], "password")
        with self._lock:
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified[key] = (principal, now + 300)
        return principal


_DUMMY_HASH = hash_password("segloop-dummy-password", salt=b"\x00" * 16)
