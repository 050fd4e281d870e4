"""HTTP access: who may call the HTTP transport, and which tenant a request acts for.

`BACKTEST_API_TOKENS` maps bearer tokens to tenants (`token1:tenant_a,token2:tenant_b`). On
HTTP the MCP SDK's own bearer middleware asks `TenantTokens.verify_token` about every request
and answers 401 before any tool runs when the token is missing or unknown; a tool then reads
its tenant from the verified token (`HttpAccess.tenant_of`). The SDK also binds each MCP
session to the tenant that opened it, so a session id is useless with another tenant's token.
stdio is one local tenant and needs no token.

Tokens are kept only as SHA-256 digests, compared with `hmac.compare_digest` against every
configured digest (the time taken says nothing about which token came close, or its length),
and are never logged: error messages name an entry by its position.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl

from backtest_sandbox.domain.errors import InvalidRequest
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.domain.tenants import LOCAL_TENANT

MIN_TOKEN_CHARS = 16  # shorter tokens are accepted with a warning: guessable
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_REDACTED = "[redacted]"

logger = logging.getLogger(__name__)


def _digest(token: str) -> bytes:
    # Digests have one length whatever the token: compare_digest then leaks nothing about it.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TenantTokens:
    """The bearer tokens of `BACKTEST_API_TOKENS`: the MCP SDK's `TokenVerifier` for them.

    The verified `AccessToken` names the tenant as its `client_id` (the identity the SDK binds
    sessions to) and does not carry the token itself.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._entries = [(_digest(token), tenant) for token, tenant in tokens.items()]
        short = (tenant for token, tenant in tokens.items() if len(token) < MIN_TOKEN_CHARS)
        self.short_tokens = set(short)  # tenants with a guessable token, for a warning

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tenants(self) -> list[str]:
        return sorted({tenant for _, tenant in self._entries})

    def tenant_of(self, token: str) -> str | None:
        """The token's tenant, or None. Compares with every configured token, matched or not."""
        presented = _digest(token)
        found = None
        for digest, tenant in self._entries:
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found

    async def verify_token(self, token: str) -> AccessToken | None:
        """`TokenVerifier`: the tenant's access, or None (the SDK then answers 401)."""
        tenant = self.tenant_of(token)
        if tenant is None:
            return None
        return AccessToken(token=_REDACTED, client_id=tenant, scopes=[])


def request_tenant(ctx: Context[Any, Any]) -> str:
    """The tenant of the HTTP request being served, from the token the SDK verified.

    Raises:
        ToolError: the request carries no verified token (it cannot get past the SDK's
            middleware; refusing here keeps a wiring mistake from opening the server).
    """
    access = get_access_token()
    if access is None:
        raise ToolError("unauthenticated: this request carries no verified bearer token")
    return access.client_id


def local_tenant(ctx: Context[Any, Any]) -> str:
    """stdio, or HTTP with --insecure-no-auth: one local tenant."""
    return LOCAL_TENANT


# -- the HTTP transport ------------------------------------------------------------------------


def _url_host(host: str) -> str:
    """`host` as it appears in a Host header or a URL (IPv6 in brackets)."""
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"[{host}]" if is_v6 else host


def transport_security(
    host: str, port: int, extra_hosts: Iterable[str] = ()
) -> TransportSecuritySettings:
    """Host and Origin checks against DNS rebinding, for a server bound to `host`:`port`.

    A request must name this server in its Host header: the bound address (every loopback name
    when it is a loopback one; only loopback names for a wildcard bind), or one of
    `extra_hosts` (what clients or a reverse proxy put there, e.g. `mcp.example.com`). A
    browser's Origin must be one of those hosts; requests without an Origin (not from a
    browser) pass.
    """
    if host in LOOPBACK_HOSTS or host in WILDCARD_HOSTS:
        names = ["127.0.0.1", "localhost", "[::1]"]
    else:
        names = [_url_host(host)]
    hosts = [f"{name}:{port}" for name in names]
    if port == 80:
        hosts += names  # a client may leave the default port out
    hosts += [h.strip() for h in extra_hosts if h.strip()]
    origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


@dataclass(frozen=True)
class HttpAccess:
    """How the HTTP transport admits requests and finds their tenant."""

    tokens: TenantTokens | None  # None: --insecure-no-auth, everyone is the local tenant
    security: TransportSecuritySettings
    base_url: str

    def tenant_of(self, ctx: Context[Any, Any]) -> str:
        """Raises:
        ToolError: tokens are required and the request has none verified.
        """
        return LOCAL_TENANT if self.tokens is None else request_tenant(ctx)

    def auth_settings(self) -> AuthSettings | None:
        """The SDK's auth settings, which switch its bearer middleware on; None without tokens."""
        if self.tokens is None:
            return None
        # This server is its own token authority (static tokens, no OAuth flows): the issuer
        # is required by the SDK but never advertised, as no metadata routes are served.
        return AuthSettings(issuer_url=AnyHttpUrl(self.base_url), resource_server_url=None)


def http_access(
    settings: Settings, *, host: str, port: int, insecure_no_auth: bool = False
) -> HttpAccess:
    """Decide, before anything starts, how the HTTP transport admits requests.

    Tokens configured: each request needs one. None configured: refused, unless
    `insecure_no_auth` and a loopback bind (a local experiment; one local tenant).

    Raises:
        InvalidRequest: the tokens are malformed, none are configured without the opt-out,
            the opt-out is combined with tokens, or it is asked for a non-loopback bind.
    """
    try:
        table = settings.tenant_tokens()
    except ValueError as e:
        field, _, rule = str(e).partition(": ")
        raise InvalidRequest(field, rule) from None
    extra = settings.allowed_hosts.split(",")
    security = transport_security(host, port, extra)
    base_url = f"http://{_url_host('127.0.0.1' if host in WILDCARD_HOSTS else host)}:{port}"
    if table:
        if insecure_no_auth:
            raise InvalidRequest(
                "--insecure-no-auth", "cannot be combined with BACKTEST_API_TOKENS; drop one"
            )
        tokens = TenantTokens(table)
        for tenant in sorted(tokens.short_tokens):
            logger.warning(
                "a token of tenant %s is shorter than %d characters: make it long and random"
                " (python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                tenant,
                MIN_TOKEN_CHARS,
            )
        return HttpAccess(tokens=tokens, security=security, base_url=base_url)
    if not insecure_no_auth:
        raise InvalidRequest(
            "BACKTEST_API_TOKENS",
            "the HTTP transport needs at least one token:tenant entry (or --api-tokens); "
            "--insecure-no-auth serves without tokens on a loopback address only",
        )
    if host not in LOOPBACK_HOSTS:
        raise InvalidRequest(
            "--insecure-no-auth",
            f"only with a loopback --host (127.0.0.1, localhost, ::1), not {host!r}",
        )
    logger.warning(
        "serving HTTP WITHOUT authentication (--insecure-no-auth): anyone who can reach "
        "%s acts as the local tenant",
        base_url,
    )
    return HttpAccess(tokens=None, security=security, base_url=base_url)
