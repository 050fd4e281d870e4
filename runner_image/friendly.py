"""Strategies as people write them at home: what the sandbox does with the parts of a script
that only make sense on the author's machine, and one-line advice when ordinary Backtrader code
fails here for a reason the exception does not say.

- `matplotlib` (plots) is not in the image: `import matplotlib.pyplot as plt` and
  `cerebro.plot()` get harmless stand-ins that draw nothing, instead of failing the run.
- `hint(exc)` says what to change for: a module that is not there (a sibling file of the author's
  or a package the image lacks), `bt.talib` without TA-Lib, a second feed the config does not
  give, and module-level code that builds and runs its own Cerebro (on files or the network).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import traceback
import types
from collections.abc import Iterator, Sequence
from typing import Any

import backtrader as bt

STANDIN_ROOT = "matplotlib"
INSTALLED = "backtrader, numpy, pandas and the standard library"
_FEED_ATTRIBUTE = re.compile(r"has no attribute '(data\d+|data_\w+)'")


class _Nothing:
    """Whatever a plotting call returns: callable, every attribute is itself, iterates as
    empty, works as a context manager. `fig, ax = plt.subplots()` unpacks to two of them."""

    def __call__(self, *args: Any, **kwargs: Any) -> _Nothing:
        return self

    def __getattr__(self, name: str) -> _Nothing:
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __iter__(self) -> Iterator[_Nothing]:
        return iter((self, self))

    def __getitem__(self, key: Any) -> _Nothing:
        return self

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __bool__(self) -> bool:
        return False


NOTHING = _Nothing()


class _StandinModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return NOTHING


class _StandinFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `matplotlib` and every `matplotlib.x` as a stand-in module."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != STANDIN_ROOT and not fullname.startswith(STANDIN_ROOT + "."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandinModule(spec.name)
        module.__path__ = []  # a package: its submodules import too
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install_standins() -> None:
    """Plotting draws nothing instead of failing: a stand-in `matplotlib` when the image has
    none, and a `Cerebro.plot` that returns no figures (there is no screen to draw on)."""
    if importlib.util.find_spec(STANDIN_ROOT) is None:
        sys.meta_path.append(_StandinFinder())
    bt.Cerebro.plot = lambda self, *args, **kwargs: []


class CerebroWatch:
    """Counts the Cerebros built while the user's module loads (`with CerebroWatch() as w`):
    module-level code that builds its own is a script's runner, not a strategy."""

    def __init__(self) -> None:
        self.built = 0
        self.raised = False  # the module's own code raised while it loaded
        self._original: Any = None

    def __enter__(self) -> CerebroWatch:
        self._original = original = bt.Cerebro.__init__

        def counting(cerebro: Any, *args: Any, **kwargs: Any) -> None:
            self.built += 1
            original(cerebro, *args, **kwargs)

        bt.Cerebro.__init__ = counting
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        bt.Cerebro.__init__ = self._original
        self.raised = exc is not None


def hint(exc: BaseException, load: CerebroWatch) -> str | None:
    """One line on what to change, or None when the exception says it already."""
    if load.raised and load.built:
        return (
            "the file's module-level code builds and runs its own Cerebro; the sandbox builds "
            "Cerebro from the config (data, cash, commission) and runs your Strategy class: "
            'move that code under `if __name__ == "__main__":`, which the sandbox does not run'
        )
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        root = exc.name.split(".")[0]
        if root == "talib":
            return _TALIB
        return (
            f"the sandbox runs one file and has only {INSTALLED}: paste what you need from "
            f"'{root}' into the strategy file if it is your own module; no other package can be "
            "installed"
        )
    text = str(exc) if isinstance(exc, AttributeError | KeyError) else ""
    if isinstance(exc, AttributeError) and "backtrader.talib" in text:
        return _TALIB
    if isinstance(exc, AttributeError) and _FEED_ATTRIBUTE.search(text):
        return _MORE_FEEDS
    if isinstance(exc, KeyError) and _raised_in(exc, "getdatabyname"):
        return _MORE_FEEDS
    return None


_TALIB = (
    "bt.talib needs the TA-Lib C library, which the sandbox does not have: use Backtrader's own "
    "indicators instead (bt.ind.SMA, bt.ind.RSI, bt.ind.MACD, ...)"
)
_MORE_FEEDS = (
    "the strategy reads a feed the run does not have: config.extra_symbols lists the symbols "
    "after the first (self.datas[1:], self.data1, getdatabyname('SYMBOL'))"
)


def _raised_in(exc: BaseException, function: str) -> bool:
    return any(frame.name == function for frame in traceback.extract_tb(exc.__traceback__))
