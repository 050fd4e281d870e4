"""Strategies written as scripts run at home: what the harness (runner_image/friendly.py)
says when ordinary Backtrader code fails here, each in one line that names what to change.
Run through the harness as the container runs it (tests/unit/test_harness.py's helpers); the
matplotlib stand-in, which only the image needs (it has no matplotlib), is proven in the image
by tests/integration/test_real_world_strategies.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_harness import SMA_CROSS, assert_runtime_error, run_code

pytestmark = pytest.mark.timeout(60)

SCRIPT = """\
import backtrader as bt


class SmaCross(bt.Strategy):
    def next(self):
        pass


cerebro = bt.Cerebro()
cerebro.addstrategy(SmaCross)
cerebro.adddata(bt.feeds.YahooFinanceCSVData(dataname="orcl-1995-2014.txt"))
cerebro.run()
"""


def message(result: dict[str, Any], exc_type: str) -> str:
    error = assert_runtime_error(result, exc_type)
    assert "\n" not in error["message"]  # one line
    return str(error["message"])


def test_a_module_level_runner_is_told_to_move_under_main(tmp_path: Path) -> None:
    result, _ = run_code(tmp_path, SCRIPT)
    text = message(result, "FileNotFoundError")
    assert "orcl-1995-2014.txt" in text  # the cause first
    assert 'move that code under `if __name__ == "__main__":`' in text


def test_a_main_block_does_not_run_and_the_strategy_does(tmp_path: Path) -> None:
    guarded = SCRIPT.replace(
        "cerebro = bt.Cerebro()", 'if __name__ == "__main__":\n    cerebro = bt.Cerebro()'
    )
    guarded = guarded.replace("\ncerebro.", "\n    cerebro.")
    result, _ = run_code(tmp_path, guarded)
    assert result["outcome"] == "completed"


def test_a_module_level_fault_without_a_cerebro_gets_no_runner_hint(tmp_path: Path) -> None:
    result, _ = run_code(tmp_path, "import backtrader as bt\nopen('settings.ini')\n")
    assert "__main__" not in message(result, "FileNotFoundError")


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("helpers", "paste what you need from 'helpers'"),
        ("mylib.signals", "paste what you need from 'mylib'"),
        ("sklearn", "has only backtrader, numpy, pandas and the standard library"),
        ("talib", "TA-Lib C library"),
    ],
)
def test_a_missing_module_says_the_one_file_rule(
    tmp_path: Path, module: str, expected: str
) -> None:
    result, _ = run_code(tmp_path, f"import {module}\n" + SMA_CROSS)
    assert expected in message(result, "ModuleNotFoundError")


def test_bt_talib_names_ta_lib_as_missing(tmp_path: Path) -> None:
    code = SMA_CROSS.replace(
        "bt.ind.SMA(period=self.p.fast)", "bt.talib.SMA(self.data, timeperiod=5)"
    )
    result, _ = run_code(tmp_path, code)
    assert "TA-Lib C library" in message(result, "AttributeError")


@pytest.mark.parametrize("reader", ["self.data1.close[0]", "self.getdatabyname('NVDA').close[0]"])
def test_a_second_feed_the_config_does_not_give_names_extra_symbols(
    tmp_path: Path, reader: str
) -> None:
    code = f"""\
import backtrader as bt


class Pairs(bt.Strategy):
    def next(self):
        self.ratio = self.data0.close[0] / {reader}
"""
    result, _ = run_code(tmp_path, code)
    error = result["error"]
    assert "config.extra_symbols lists the symbols" in error["message"]


def test_cerebro_plot_draws_nothing_instead_of_failing(tmp_path: Path) -> None:
    code = (
        SMA_CROSS
        + """

    def stop(self):
        self.env.plot()  # as a script's last line would, on the strategy's own Cerebro
"""
    )
    result, _ = run_code(tmp_path, code)
    assert result["outcome"] == "completed"
