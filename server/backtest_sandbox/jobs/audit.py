"""The audit log (logger `backtest_sandbox.audit`): one line per submission, cancel, delete
and finished run, with the tenant, the backtest id, the code's SHA-256 and the verdict; never
the code or a token.
"""

from __future__ import annotations

import hashlib
import logging
import re

AUDIT_LOGGER = "backtest_sandbox.audit"
audit_logger = logging.getLogger(AUDIT_LOGGER)

_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:\-\[\]]{1,80}")


def code_sha256(code: object) -> str:
    """The code's SHA-256 hex digest; `-` for a value that is not text."""
    if not isinstance(code, str):
        return "-"
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


def _value(value: object) -> str:
    """One logfmt value; anything a caller chose (an id, a field name) that is not plainly
    safe is replaced, so a line cannot be forged or split."""
    if isinstance(value, bool):
        return str(value).lower()
    text = "-" if value is None else str(value)
    return text if _SAFE_VALUE.fullmatch(text) else "invalid"


def record(event: str, tenant: str, backtest_id: object, code_hash: str, **fields: object) -> None:
    """One audit line: `event tenant=... backtest_id=... code_sha256=... key=value ...`."""
    pairs = {"tenant": tenant, "backtest_id": backtest_id, "code_sha256": code_hash, **fields}
    audit_logger.info("%s %s", event, " ".join(f"{k}={_value(v)}" for k, v in pairs.items()))
