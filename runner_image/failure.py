"""Turning an exception raised by the user's code into the protocol's `error` object."""

from __future__ import annotations

import linecache
import os
import traceback
from typing import Any

TRACEBACK_CAP = 8 * 1024  # bytes, PROTOCOL.md
MESSAGE_CAP = 8 * 1024  # bytes; the host refuses more than 16 KiB of text in any field
EXC_TYPE_CAP = 200  # characters; the host refuses an exc_type over 256
_HARNESS_DIR = os.path.dirname(os.path.abspath(__file__))


def error_info(exc: BaseException, filename: str) -> dict[str, str]:
    """`{exc_type, message, traceback}` for `exc`, the traceback cut to the user's frames."""
    return {
        "exc_type": type(exc).__name__[:EXC_TYPE_CAP],
        "message": _cap_bytes(_message(exc), MESSAGE_CAP),
        "traceback": user_traceback(exc, filename),
    }


def plain_error(exc_type: str, message: str) -> dict[str, str]:
    """An error the harness reports itself (no strategy to run): no user frames to show."""
    return {"exc_type": exc_type, "message": message, "traceback": ""}


def user_traceback(exc: BaseException, filename: str) -> str:
    """The frames of `exc` in `filename`, most recent last, at most TRACEBACK_CAP bytes.

    With no such frame, the innermost frame outside the harness alone (the place in backtrader
    that raised). A SyntaxError raised while compiling points into the code, but not through a
    frame: its `File "strategy.py", line N` header and caret come from format_exception_only.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    own = [frame for frame in frames if frame.filename == filename]
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        if exc.text is None and exc.lineno:  # errors found after parsing carry no source line
            exc.text = linecache.getline(filename, exc.lineno)
        parts = [*traceback.format_list(own), *traceback.format_exception_only(exc)]
    else:
        foreign = [frame for frame in frames if not _in_harness(frame.filename)]
        parts = traceback.format_list(own or foreign[-1:])
    return _tail_within(parts, TRACEBACK_CAP)


def _in_harness(path: str) -> bool:
    return os.path.dirname(os.path.abspath(path)) == _HARNESS_DIR


def _message(exc: BaseException) -> str:
    # str() runs the user's __str__, which may itself raise: a failure to describe the
    # exception must not become a harness crash.
    try:
        return str(exc)
    except Exception:  # anything a hostile __str__ raises
        return f"<unprintable {type(exc).__name__}>"


def _tail_within(parts: list[str], cap: int) -> str:
    """Join `parts`, dropping the oldest whole parts until the text fits in `cap` bytes."""
    sizes = [len(part.encode("utf-8", "replace")) for part in parts]
    total = sum(sizes)
    start = 0
    while total > cap and start < len(parts) - 1:
        total -= sizes[start]
        start += 1
    return _cap_bytes("".join(parts[start:]), cap)


def _cap_bytes(text: str, cap: int) -> str:
    # "replace" turns lone surrogates (possible in a str, not in UTF-8) into "?"; "ignore"
    # drops a character the cut went through.
    return text.encode("utf-8", "replace")[:cap].decode("utf-8", "ignore")


def error_result(version: str, error: dict[str, Any]) -> dict[str, Any]:
    """The whole runtime_error result."""
    return {
        "protocol": 1,
        "outcome": "runtime_error",
        "backtrader_version": version,
        "error": error,
    }


def unsupported_result(version: str, feature: str, message: str) -> dict[str, Any]:
    """The whole unsupported_feature result: a verified run cannot honour `feature`."""
    return {
        "protocol": 1,
        "outcome": "unsupported_feature",
        "backtrader_version": version,
        "feature": feature[:EXC_TYPE_CAP],
        "error": plain_error("UnsupportedFeature", _cap_bytes(message, MESSAGE_CAP)),
    }
