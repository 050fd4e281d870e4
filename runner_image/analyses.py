"""The analyzers' results as plain JSON (PROTOCOL.md "analyzers").

`get_analysis()` of a built-in analyzer is an OrderedDict or AutoOrderedDict, often keyed by
datetime (TimeReturn), sometimes holding NaN (SharpeRatio on a flat curve) or numpy scalars.
An analyzer the strategy adds itself is user code: its get_analysis may raise, return a dict
that contains itself, or something enormous. Nothing here may fail the run for that: each
analyzer ends as a JSON value or as an error string, and the sizes are bounded.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import backtrader as bt
import numpy as np  # Backtrader's pandas brings it, in the image and for the referee

MAX_ANALYZERS = 64  # reported per run (a config adds at most 20; the strategy the rest)
MAX_DEPTH = 32  # containers nested in one value
MAX_VALUE_BYTES = 256 * 1024  # one analyzer's value, as compact JSON
MAX_TOTAL_BYTES = 1024 * 1024  # all of them
MAX_STRING_CHARS = 4096  # a string value (or an object's str()) is cut to this
MAX_KEY_CHARS = 200  # a key, and an analyzer's name
MAX_ERROR_CHARS = 1024
_MAX_INT = 2**63 - 1  # larger integers are sent as strings (the host refuses them as numbers)


class TooLarge(Exception):
    """The value outgrew its budget while being converted."""


class TooDeep(Exception):
    """The value nests more than MAX_DEPTH containers (or contains itself)."""


def collect(strategy: Any, exclude: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(name -> JSON value, name -> why it has none) for the analyzers registered with
    `strategy` (the config's, and those the strategy added itself), in their order; the one
    named `exclude` (the sandbox's own recorder) left out. Never raises."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    total = 0
    try:
        items = list(strategy.analyzers.getitems())
    except BaseException as exc:  # the strategy replaced its collection with something else
        return {}, {"analyzers": _describe(exc)}
    for raw_name, analyzer in items:
        if len(values) + len(errors) >= MAX_ANALYZERS:
            break
        name = _safe_text(raw_name, MAX_KEY_CHARS) or "analyzer"
        if name == exclude:
            continue
        name = _unique(name, values.keys() | errors.keys())
        try:
            value = to_json(analyzer.get_analysis())
            size = json_size(value)
            if size > MAX_VALUE_BYTES:
                raise TooLarge
        except TooLarge:
            errors[name] = f"too large: its JSON is over {MAX_VALUE_BYTES} bytes"
            continue
        except TooDeep:
            errors[name] = f"nested more than {MAX_DEPTH} levels deep (does it contain itself?)"
            continue
        except BaseException as exc:  # user code: whatever it raised, SystemExit included
            errors[name] = _describe(exc)
            continue
        if total + size > MAX_TOTAL_BYTES:
            errors[name] = f"too large: the analyzers together are over {MAX_TOTAL_BYTES} bytes"
            continue
        total += size
        values[name] = value
    return values, errors


def failure_hint(exc: BaseException, configured: list[dict[str, Any]]) -> str | None:
    """One line on what to change when `exc` was raised by the code of one of Backtrader's
    own analyzers (a param it cannot work with), or None.

    The analyzer is the outermost one on the stack (SharpeRatio, not the TimeReturn it runs
    inside itself); the exception must have been raised in Backtrader's code, not the user's.
    """
    found, innermost = None, None
    tb = exc.__traceback__
    while tb is not None:
        owner = type(tb.tb_frame.f_locals.get("self"))  # type(): no user code runs
        if found is None and issubclass(owner, bt.Analyzer):
            found = owner
        innermost = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if found is None or innermost is None or not innermost.startswith(_BACKTRADER_DIR):
        return None
    if not found.__module__.startswith("backtrader."):
        return None
    where = f"raised inside Backtrader's {found.__name__} analyzer"
    if any(spec.get("name") == found.__name__ for spec in configured):
        return f"{where}: change or drop its params in config.analyzers"
    return f"{where}, which the strategy registers"


_BACKTRADER_DIR = os.path.dirname(bt.__file__) + os.sep


def json_size(value: Any) -> int:
    """The length of `value` as compact JSON, the measure every bound here uses (the host's
    too: ASCII, so characters are bytes)."""
    return len(json.dumps(value, allow_nan=False, separators=(",", ":")))


def to_json(value: Any) -> Any:
    """`value` as plain JSON: mappings to objects with string keys (dates and datetimes as
    ISO), sequences to arrays, numpy scalars to Python ones, non-finite floats to null,
    anything else to its str(), cut.

    Raises:
        TooLarge: its JSON would be over MAX_VALUE_BYTES.
        TooDeep: it nests more than MAX_DEPTH containers.
        BaseException: whatever the value's own methods (items, str) raise.
    """
    return _Converter().convert(value, 0)


class _Converter:
    def __init__(self) -> None:
        # An upper bound of the JSON's length so far: a value a million times its own child
        # stops here, long before it is built.
        self.budget = MAX_VALUE_BYTES

    def spend(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise TooLarge

    def convert(self, value: Any, depth: int) -> Any:
        scalar = self.scalar(value)
        if scalar is not _NOT_SCALAR:
            return scalar
        if depth >= MAX_DEPTH:
            raise TooDeep
        if isinstance(value, Mapping):
            self.spend(2)
            converted: dict[str, Any] = {}
            for key, item in value.items():
                text = _key(key)
                self.spend(len(json.dumps(text)) + 2)  # the key, its colon and a comma
                converted[text] = self.convert(item, depth + 1)
            return converted
        if isinstance(value, list | tuple | set | frozenset) or _is_array(value):
            self.spend(2)
            if _is_array(value):
                self.spend(int(value.size))  # at least a byte an element, before tolist()
            items = value.tolist() if _is_array(value) else value
            return [self.convert(item, depth + 1) for item in _counted(items, self)]
        text = _safe_text(value, MAX_STRING_CHARS)
        self.spend(len(json.dumps(text)))
        return text

    def scalar(self, value: Any) -> Any:
        """The JSON scalar for `value`, or _NOT_SCALAR."""
        if value is None or isinstance(value, bool):
            self.spend(5)
            return value
        if isinstance(value, int):
            self.spend(20)
            return int(value) if -_MAX_INT <= value <= _MAX_INT else str(value)[:MAX_STRING_CHARS]
        if isinstance(value, float):
            self.spend(24)
            return float(value) if math.isfinite(value) else None
        if isinstance(value, str):
            text = str(value[:MAX_STRING_CHARS])
            self.spend(len(json.dumps(text)))
            return text
        if isinstance(value, datetime.date | datetime.time):
            self.spend(40)
            return value.isoformat()
        if _is_numpy_scalar(value):  # np.float64 is a float already; np.int64 is not an int
            return self.scalar(value.item())
        return _NOT_SCALAR


_NOT_SCALAR = object()


def _counted(items: Any, converter: _Converter) -> Any:
    for item in items:
        converter.spend(1)  # the comma; also stops an endless iterator
        yield item


# By type only: an attribute lookup on an analysis can change it (AutoOrderedDict, which most
# built-in analyzers return, creates a key for any attribute it lacks).
def _is_numpy_scalar(value: Any) -> bool:
    return isinstance(value, np.generic) or (isinstance(value, np.ndarray) and not value.ndim)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim > 0  # 0-d: .item(), as a scalar


def _key(key: Any) -> str:
    """A mapping key as JSON's: strings as they are, datetimes as ISO, numbers as json.dumps
    writes them, anything else as its str()."""
    if isinstance(key, str):
        return str(key[:MAX_KEY_CHARS])
    if isinstance(key, datetime.date | datetime.time):
        return key.isoformat()
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)[:MAX_KEY_CHARS]
    return _safe_text(key, MAX_KEY_CHARS)


def _safe_text(value: Any, limit: int) -> str:
    """str(value), cut to `limit`; a note when str() itself raises."""
    try:
        text = value if isinstance(value, str) else str(value)
        return str(text[:limit])
    except BaseException:
        return f"<{type(value).__name__} that cannot be shown>"[:limit]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_safe_text(exc, MAX_ERROR_CHARS)}"[:MAX_ERROR_CHARS]


def _unique(name: str, taken: Any) -> str:
    if name not in taken:
        return name
    suffix = 2
    while f"{name}_{suffix}" in taken:
        suffix += 1
    return f"{name}_{suffix}"
