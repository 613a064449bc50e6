"""Bearer tokens with two scopes: `read` (queries, the page, SQL) and `operate` (commands).

A token's name is who acts: it is recorded as `by` on the facts its commands produce. With no
token configured, the API answers loopback clients only, each as `local` with both scopes; a
request from elsewhere is refused (403) rather than served unauthenticated, and so is one whose
Host or Origin header names another site (a page whose name was rebound to 127.0.0.1: DNS
rebinding). 401 means "who are
you?" (no token, or one we do not know); 403 means "you may not" (a read token on a command,
or no tokens and a remote client). The webhook keeps its own token (VIGIL_WEBHOOK_TOKEN).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

Scope = Literal["read", "operate"]
LOCAL = "local"  # who acts when no token is configured and the client is on loopback


class ApiToken(BaseModel):
    """One bearer token of the API: `name` is recorded as `by` on the facts it produces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    scope: Scope
    token: SecretStr = Field(min_length=16)

    @classmethod
    def parse(cls, item: str) -> ApiToken:
        """`name:scope:token` (the token may itself hold colons); ValueError names the fault."""
        parts = item.strip().split(":", 2)
        if len(parts) != 3:  # never echo it: a misplaced secret is all there may be
            raise ValueError("an API token is not name:scope:token")
        name, scope, token = parts
        if scope not in ("read", "operate"):
            raise ValueError(f"API token {name!r} has scope {scope!r}; use read or operate")
        if len(token) < 16:
            raise ValueError(f"API token {name!r} is shorter than 16 characters")
        return cls(name=name, scope=scope, token=SecretStr(token))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a token's name (or `local`) and what it may do."""

    name: str
    scope: Scope

    def may(self, needed: Scope) -> bool:
        return needed == "read" or self.scope == "operate"


class Tokens:
    """The configured tokens; `who` answers a request's Authorization header."""

    def __init__(self, tokens: list[ApiToken]) -> None:
        self._tokens = [(t.token.get_secret_value().encode(), t) for t in tokens]

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def who(
        self,
        authorization: str | None,
        client_host: str | None,
        *,
        host: str | None = None,
        origin: str | None = None,
    ) -> Principal:
        """The principal, or HTTPException 401/403 saying what is wrong. `host` and `origin`
        are the request's headers: with no token, both must name this machine too."""
        if not self._tokens:
            if not _is_loopback(client_host):
                raise HTTPException(
                    403,
                    "no API token is configured, so the API answers loopback clients only; "
                    "set VIGIL_API_TOKENS (name:scope:token) to serve others",
                )
            # A page elsewhere whose name is rebound to 127.0.0.1 (DNS rebinding) reaches us
            # from loopback too; its Host (and a browser's Origin) still name that site.
            if not _names_loopback(host) or (origin is not None and not _names_loopback(origin)):
                raise HTTPException(
                    403,
                    "no API token is configured, so the API answers requests addressed to "
                    "localhost only (Host and Origin); set VIGIL_API_TOKENS to serve others",
                )
            return Principal(LOCAL, "operate")
        if not authorization:
            raise _unauthorized("this needs a bearer token: Authorization: Bearer <token>")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _unauthorized("the Authorization header must be `Bearer <token>`")
        presented = given.strip().encode()
        found = None
        for secret, token in self._tokens:  # compare with every one: the time tells nothing
            if hmac.compare_digest(secret, presented):
                found = token
        if found is None:
            raise _unauthorized("this bearer token is not one of VIGIL_API_TOKENS")
        return Principal(found.name, found.scope)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "testclient"  # starlette's TestClient; never a real peer address


def _names_loopback(value: str | None) -> bool:
    """A Host header (`name[:port]`) or an Origin (`scheme://name[:port]`) naming this machine:
    localhost or a loopback address."""
    if value is None:
        return False
    name = value.partition("://")[2] if "://" in value else value
    if name.startswith("["):  # [::1]:8080
        name = name[1 : name.find("]")] if "]" in name else ""
    else:
        name = name.rpartition(":")[0] if ":" in name else name
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _principal(needed: Scope) -> Callable[[Request], Principal]:
    def dependency(request: Request) -> Principal:
        tokens: Tokens = request.app.state.tokens
        client = request.client.host if request.client else None
        principal = tokens.who(
            request.headers.get("authorization"),
            client,
            host=request.headers.get("host"),
            origin=request.headers.get("origin"),
        )
        if not principal.may(needed):
            raise HTTPException(
                403,
                f"token {principal.name!r} has scope {principal.scope}; this needs {needed}",
            )
        return principal

    return dependency


Reader = Annotated[Principal, Depends(_principal("read"))]
Operator = Annotated[Principal, Depends(_principal("operate"))]
