"""Tenants and their bearer tokens, as `BACKTEST_API_TOKENS` names them.

Pure parsing, no I/O: the settings validate the table with it at start-up, and the HTTP
transport (api/http_auth.py) checks requests against it.
"""

from __future__ import annotations

import re

LOCAL_TENANT = "local"  # stdio, the CLI, and HTTP with --insecure-no-auth
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Visible ASCII: what an HTTP header carries unchanged. ',' and ':' separate the entries.
TOKEN_PATTERN = re.compile(r"[!-~]+")


def parse_api_tokens(spec: str) -> dict[str, str]:
    """token -> tenant, from `token1:tenant_a,token2:tenant_b` (blanks around entries ignored).

    Several tokens may share a tenant (rotation: add the new token, then drop the old one).

    Raises:
        ValueError: an entry is not `token:tenant`, a token holds characters other than
            visible ASCII, a tenant name breaks TENANT_PATTERN, or a token is given twice.
            The message names the entry by its position, never its token.
    """
    tokens: dict[str, str] = {}
    for position, entry in enumerate(filter(None, (e.strip() for e in spec.split(","))), 1):
        token, sep, tenant = entry.partition(":")
        where = f"BACKTEST_API_TOKENS: entry {position}"
        if not sep or not token or not tenant:
            raise ValueError(f"{where} must be token:tenant")
        if not TOKEN_PATTERN.fullmatch(token):
            raise ValueError(f"{where}: the token must be visible ASCII, without blanks")
        if not TENANT_PATTERN.fullmatch(tenant):
            raise ValueError(
                f"{where}: the tenant name must be 1 to 64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if token in tokens:
            raise ValueError(f"{where}: this token is already given to another entry")
        tokens[token] = tenant
    return tokens
