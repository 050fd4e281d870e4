"""Loading the user's code as module `strategy` and finding the Strategy class it asks to run."""

from __future__ import annotations

import linecache
import sys
import types

import backtrader as bt

MODULE_NAME = "strategy"


class StrategyDiscoveryError(Exception):
    """The code ran but names no usable Strategy class; reported as a runtime_error."""


def load_module(code: str, filename: str) -> types.ModuleType:
    """Compile and execute `code` as a fresh module `strategy`.

    Raises:
        BaseException: whatever the user's module-level code raises (SyntaxError included).
    """
    # linecache first, so a traceback through the user's code shows its source lines. A None
    # mtime marks the entry as not file-backed: checkcache() leaves it alone.
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = filename
    # Registered before exec, as an import would, so the code can refer to its own module
    # (pickle, typing.get_type_hints, dataclasses all look classes up in sys.modules).
    sys.modules[MODULE_NAME] = module
    compiled = compile(code, filename, "exec", dont_inherit=True)
    exec(compiled, module.__dict__)
    return module


def find_strategy(module: types.ModuleType) -> type[bt.Strategy]:
    """`module.STRATEGY` if set, else the one strategy the module's author wrote: its
    bt.Strategy subclasses, less the classes Backtrader makes for an `alias = (...)`, less
    the bases another of them derives from (an abstract base is not a choice).

    Raises:
        StrategyDiscoveryError: STRATEGY is not a Strategy subclass, or there is no strategy,
            or several without STRATEGY to choose.
    """
    namespace = vars(module)
    if "STRATEGY" in namespace:
        return _checked_choice(namespace["STRATEGY"])
    # dict.fromkeys: an alias (`B = A`) is the same class, not a second strategy.
    own: list[type[bt.Strategy]] = list(
        dict.fromkeys(value for value in namespace.values() if _is_own_strategy(value))
    )
    # The leaves: a class another one extends is a base, written to be extended.
    defined = [c for c in own if not any(o is not c and issubclass(o, c) for o in own)]
    if len(defined) == 1:
        return defined[0]
    if not defined:
        raise StrategyDiscoveryError(
            "strategy.py defines no backtrader.Strategy subclass; define one, "
            "e.g. `class MyStrategy(bt.Strategy): ...`"
        )
    names = ", ".join(cls.__name__ for cls in defined)
    raise StrategyDiscoveryError(
        f"strategy.py defines several backtrader.Strategy subclasses ({names}); "
        f"name the one to run with `STRATEGY = {defined[-1].__name__}`"
    )


def _is_own_strategy(value: object) -> bool:
    # Only classes defined by this code count: `from x import OtherStrategy` is not a choice,
    # nor the subclass Backtrader's metaclass makes under each name of a class's `alias`
    # (it sets `aliased` on those to the original's name, on every other class to "").
    return (
        isinstance(value, type)
        and issubclass(value, bt.Strategy)
        and value is not bt.Strategy
        and value.__module__ == MODULE_NAME
        and not vars(value).get("aliased")
    )


def _checked_choice(value: object) -> type[bt.Strategy]:
    if not isinstance(value, type):
        raise StrategyDiscoveryError(
            "STRATEGY must be a backtrader.Strategy subclass, "
            f"not a value of type {type(value).__name__}"
        )
    if not issubclass(value, bt.Strategy):
        raise StrategyDiscoveryError(
            f"STRATEGY must be a backtrader.Strategy subclass; {value.__name__} is not one"
        )
    if value is bt.Strategy:
        raise StrategyDiscoveryError(
            "STRATEGY must be a subclass of backtrader.Strategy, not backtrader.Strategy itself"
        )
    return value
