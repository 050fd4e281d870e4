"""What a submission is made of besides its config: the code, its language, the backtest id.

Each rule here is checked in one place and cheaply (no data, no Docker), so that the CLI and
the service refuse the same things with the same words, before any costly work.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal, get_args

from .errors import ErrorType, InvalidRequest
from .models import RunError

Language = Literal["python", "mq5"]
LANGUAGES: tuple[Language, ...] = get_args(Language)  # accepted by the schema
RUNNABLE_LANGUAGES: frozenset[Language] = frozenset({"python"})  # can run today

BACKTEST_ID_PATTERN = re.compile(r"bt_[0-9a-f]{32}")
STRATEGY_FILENAME = "strategy.py"  # the name tracebacks and syntax errors show


def new_backtest_id() -> str:
    """128 random bits: ids are unguessable, since knowing one is enough to read it."""
    return f"bt_{secrets.token_hex(16)}"


def is_backtest_id(value: object) -> bool:
    return isinstance(value, str) and BACKTEST_ID_PATTERN.fullmatch(value) is not None


def check_code(code: Any, max_bytes: int, *, field: str = "code_content") -> str:
    """The strategy source, if it is acceptable to store and run.

    Raises:
        InvalidRequest: not text, empty, NUL bytes, lone surrogates, or over `max_bytes`.
    """
    if not isinstance(code, str):
        raise InvalidRequest(field, "must be a string of Python source")
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(field, "must be valid Unicode text (it has lone surrogates)") from None
    if size > max_bytes:
        raise InvalidRequest(field, f"must be at most {max_bytes} bytes of UTF-8 (got {size})")
    if "\x00" in code:
        raise InvalidRequest(field, "must not contain NUL bytes")
    if not code.strip():
        raise InvalidRequest(field, "must not be empty")
    return code


def check_language(language: Any) -> Language:
    """Raises:
    InvalidRequest: not one of LANGUAGES.
    """
    for known in LANGUAGES:
        if language == known:
            return known
    raise InvalidRequest("language", f"must be one of {', '.join(LANGUAGES)}")


def unsupported_language(language: Language) -> RunError | None:
    """The failure of a language the schema accepts but nothing runs yet; None if it runs."""
    if language in RUNNABLE_LANGUAGES:
        return None
    return RunError(
        type=ErrorType.UNSUPPORTED_LANGUAGE,
        message=f"language {language!r} is accepted but cannot run yet; only python runs",
        details={"language": language, "runnable": sorted(RUNNABLE_LANGUAGES)},
    )


def check_syntax(code: str) -> RunError | None:
    """Compile on the host (never execute): a syntax error needs no container."""
    try:
        compile(code, STRATEGY_FILENAME, "exec", dont_inherit=True)
    except SyntaxError as e:
        return RunError(
            type=ErrorType.SYNTAX_ERROR,
            message=f"{e.msg} ({STRATEGY_FILENAME}, line {e.lineno}, column {e.offset})",
            details={"line": e.lineno, "column": e.offset, "text": (e.text or "").rstrip()},
        )
    except (ValueError, RecursionError, MemoryError) as e:  # NUL bytes, absurd nesting
        return RunError(type=ErrorType.SYNTAX_ERROR, message=str(e), details={})
    return None
