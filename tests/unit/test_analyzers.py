"""Analyzers' results (config.analyzers, and those a strategy registers itself): the harness run
as the container runs it, compared with plain Backtrader given the same analyzers; what the
host accepts of them (sandbox/claim.py); and how a status answer carries them (jobs/views.py).

The reference converts `get_analysis()` to JSON with rules written here, apart from
runner_image/analyses.py: mappings to objects (datetime keys as ISO, other keys as JSON
writes them), sequences to arrays, NaN and infinities to null.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest

from backtest_sandbox.domain import analyzers as builtin
from backtest_sandbox.domain.models import BacktestResult, DataInfo, JobStatus, Provenance
from backtest_sandbox.jobs import views
from backtest_sandbox.jobs.engine import _claim_matches
from backtest_sandbox.sandbox.claim import CompletedClaim, InvalidClaim, parse_claim
from tests.unit.test_harness import (
    COSTLY,
    SMA_CROSS,
    TIMESTAMP_FORMAT,
    Job,
    make_job,
    run_harness,
    spec_for,
)

pytestmark = pytest.mark.timeout(120)

ORCL = "orcl-1995-2014.txt"  # twenty years: a yearly Sharpe ratio has returns to work on
DAILY_2006 = "2006-day-001.txt"


def plain_json(value: Any) -> Any:
    """JSON as the protocol says an analysis is sent (written apart from analyses.py)."""
    if isinstance(value, dict):
        return {json_key(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, datetime.date):
        return key.isoformat()
    return json.dumps(key)


def plain_analyses(job: Job, code: str, params: dict[str, Any], broker: dict[str, Any],
                   specs: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The same run as textbook Backtrader (PandasData, default Cerebro and its observers),
    with each analyzer added as a script's main() adds it; their analyses as plain JSON."""
    module = types.ModuleType("reference_analyzed")
    sys.modules[module.__name__] = module  # backtrader's metaclasses look classes up there
    exec(compile(code, "reference_analyzed.py", "exec"), module.__dict__)
    frame = pd.read_csv(job.data_csv, index_col="datetime")
    frame.index = pd.to_datetime(frame.index, format=TIMESTAMP_FORMAT)
    cerebro = bt.Cerebro()
    cerebro.adddata(bt.feeds.PandasData(dataname=frame))
    cerebro.broker.setcash(broker["initial_capital"])
    cerebro.broker.setcommission(commission=broker["commission"])
    cerebro.broker.set_slippage_perc(broker["slippage"])
    cerebro.addsizer(bt.sizers.FixedSize, stake=broker["stake"])
    strategy_class = next(
        value for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, bt.Strategy) and value is not bt.Strategy
    )  # fmt: skip
    cerebro.addstrategy(strategy_class, **params)
    for spec in specs:
        kwargs = dict(spec.get("params", {}))
        if "timeframe" in kwargs:
            kwargs["timeframe"] = getattr(bt.TimeFrame, kwargs["timeframe"])
        cerebro.addanalyzer(getattr(bt.analyzers, spec["name"]), _name=spec["name"], **kwargs)
    strategy = cerebro.run()[0]
    return {name: plain_json(a.get_analysis()) for name, a in strategy.analyzers.getitems()}


def harness_run(
    tmp_path: Path, code: str, specs: list[dict[str, Any]], source: str = DAILY_2006,
    params: dict[str, Any] | None = None,
) -> tuple[Job, dict[str, Any], bytes]:  # fmt: skip
    job = make_job(tmp_path, source)
    spec = spec_for(job, textwrap.dedent(code), params=params, broker=COSTLY)
    spec["analyzers"] = specs
    process = run_harness(job, spec)
    assert process.returncode == 0, process.stderr
    raw = (job.out_dir / "result.json").read_bytes()
    return job, json.loads(raw), raw


# --- the config's built-in analyzers agree with plain Backtrader ------------------------------

SMA_PARAMS = {"fast": 10, "slow": 30}


def test_sharpe_drawdown_and_trades_over_twenty_years_match_plain_backtrader(
    tmp_path: Path,
) -> None:
    specs = [
        {"name": "SharpeRatio", "params": {}},
        {"name": "SharpeRatio_A", "params": {"timeframe": "Days", "riskfreerate": 0.0}},
        {"name": "DrawDown", "params": {}},
        {"name": "TradeAnalyzer", "params": {}},
        {"name": "TimeReturn", "params": {"timeframe": "Months"}},
        {"name": "AnnualReturn", "params": {}},  # reads the Broker observer
        {"name": "SQN", "params": {}},
    ]
    job, result, raw = harness_run(tmp_path, SMA_CROSS, specs, ORCL, SMA_PARAMS)
    assert result["outcome"] == "completed", result.get("error")
    expected = plain_analyses(job, SMA_CROSS, SMA_PARAMS, COSTLY, specs)
    assert result["analyzer_errors"] == {}
    assert list(result["analyzers"]) == [spec["name"] for spec in specs]  # config order
    assert result["analyzers"] == expected  # every float bit for bit
    # Not vacuous: real figures, and the params reached Backtrader.
    analyzers = result["analyzers"]
    assert isinstance(analyzers["SharpeRatio"]["sharperatio"], float)
    assert analyzers["SharpeRatio_A"]["sharperatio"] != analyzers["SharpeRatio"]["sharperatio"]
    assert analyzers["TradeAnalyzer"]["total"]["closed"] == len(result["trades"]) > 50
    assert analyzers["DrawDown"]["max"]["drawdown"] > 0
    assert len(analyzers["TimeReturn"]) == 240 and "2014-12-31T00:00:00" in analyzers["TimeReturn"]
    assert list(analyzers["AnnualReturn"]) == [str(year) for year in range(1995, 2015)]
    # The host takes what the harness sends.
    claim = parse_claim(raw, expected_bars=result["bars"])
    assert isinstance(claim, CompletedClaim) and claim.analyzers == expected


def test_every_builtin_analyzer_runs_and_matches_plain_backtrader(tmp_path: Path) -> None:
    specs = [{"name": name, "params": {}} for name in builtin.BUILTIN_ANALYZERS]
    job, result, raw = harness_run(tmp_path, SMA_CROSS, specs, DAILY_2006, SMA_PARAMS)
    assert result["outcome"] == "completed", result.get("error")
    assert result["analyzer_errors"] == {}
    assert result["analyzers"] == plain_analyses(job, SMA_CROSS, SMA_PARAMS, COSTLY, specs)
    assert isinstance(parse_claim(raw, expected_bars=result["bars"]), CompletedClaim)


def test_the_table_of_params_is_backtraders_own() -> None:
    """domain/analyzers.py, which the host checks configs against, says what this Backtrader
    (the image's version) defines: every public param but `data`."""
    for name, params in builtin.BUILTIN_ANALYZERS.items():
        cls = getattr(bt.analyzers, name)
        assert issubclass(cls, bt.Analyzer)
        public = [p for p in cls.params._getkeys() if not p.startswith("_") and p != "data"]
        assert sorted(params) == sorted(public), name
    assert bt.__version__ == "1.9.78.123"
    assert list(builtin.TIMEFRAMES) == bt.TimeFrame.Names[1:]


# --- analyzers the strategy registers itself --------------------------------------------------

SELF_ANALYZED = SMA_CROSS.replace(
    "        self.cross = bt.ind.CrossOver(fast, slow)\n",
    "        self.cross = bt.ind.CrossOver(fast, slow)\n"
    "        self._addanalyzer(bt.analyzers.SQN, _name='mine')\n"
    "        self._addanalyzer(bt.analyzers.DrawDown)\n",
)


def test_analyzers_the_strategy_registers_come_back_by_their_names(tmp_path: Path) -> None:
    assert SELF_ANALYZED != SMA_CROSS
    specs = [{"name": "DrawDown", "params": {}}]
    job, result, _ = harness_run(tmp_path, SELF_ANALYZED, specs, DAILY_2006, SMA_PARAMS)
    expected = plain_analyses(job, SELF_ANALYZED, SMA_PARAMS, COSTLY, specs)
    # The strategy's own first (registered in its __init__), then the config's.
    assert list(result["analyzers"]) == ["mine", "drawdown", "DrawDown"] == list(expected)
    assert result["analyzers"] == expected
    assert result["analyzers"]["mine"]["trades"] == len(result["trades"]) > 0
    assert "_sandbox_recorder" not in result["analyzers"]


HOSTILE = """\
import backtrader as bt


class Later(bt.Analyzer):
    # Answers Cerebro's own call at the end of run (for its writers), then raises.

    calls = 0

    def get_analysis(self):
        self.calls += 1
        if self.calls > 1:
            self.fail()
        return {}


class Raises(Later):
    def fail(self):
        raise ValueError("no analysis today")


class Exits(Later):
    def fail(self):
        raise SystemExit(3)


class ContainsItself(bt.Analyzer):
    def get_analysis(self):
        loop = {"name": "loop"}
        loop["self"] = loop
        return loop


class Huge(bt.Analyzer):
    def get_analysis(self):
        return {"rows": [[i, i * 0.5, "x" * 20] for i in range(20_000)]}


class Big(bt.Analyzer):  # 240 KB each: four fit in the 1 MiB for all, the fifth does not
    def get_analysis(self):
        return {"text": ["y" * 3990] * 60}


class Unshowable:
    def __str__(self):
        raise RuntimeError("cannot show")


class Odd(bt.Analyzer):
    def get_analysis(self):
        return {"nan": float("nan"), "inf": float("-inf"), 3: {2.5: None}, "when": {
            __import__("datetime").date(2006, 1, 2): True}, "set": {7}, "big": 10 ** 30,
            "object": Unshowable(), "long": "z" * 10_000}


class Hostile(bt.Strategy):
    def __init__(self):
        for cls in (Raises, Exits, ContainsItself, Huge, Odd):
            self._addanalyzer(cls)
        for _ in range(5):
            self._addanalyzer(Big)

    def next(self):
        if len(self) == 10:
            self.buy()
"""


def test_hostile_analyses_are_errors_of_their_own_not_a_failed_run(tmp_path: Path) -> None:
    specs = [{"name": "SQN", "params": {}}]
    _, result, raw = harness_run(tmp_path, HOSTILE, specs)
    assert result["outcome"] == "completed", result.get("error")
    assert result["analyzer_errors"] == {
        "raises": "ValueError: no analysis today",
        "exits": "SystemExit: 3",
        "containsitself": "nested more than 32 levels deep (does it contain itself?)",
        "huge": "too large: its JSON is over 262144 bytes",
        "big4": "too large: the analyzers together are over 1048576 bytes",
    }
    values = result["analyzers"]
    assert list(values) == ["odd", "big", "big1", "big2", "big3", "SQN"]
    assert values["odd"] == {
        "nan": None, "inf": None, "3": {"2.5": None}, "when": {"2006-01-02": True},
        "set": [7], "big": str(10**30), "object": "<Unshowable that cannot be shown>",
        "long": "z" * 4096,
    }  # fmt: skip
    assert values["big"] == {"text": ["y" * 3990] * 60}
    assert values["SQN"] == {"sqn": 0, "trades": 0}  # the config's analyzer still reports
    claim = parse_claim(raw, expected_bars=result["bars"])
    assert isinstance(claim, CompletedClaim) and claim.analyzer_errors["exits"] == "SystemExit: 3"


ALWAYS_RAISES = """\
import backtrader as bt


class Raises(bt.Analyzer):
    def get_analysis(self):
        raise ValueError("no analysis today")


class Analyzed(bt.Strategy):
    def __init__(self):
        self._addanalyzer(Raises)
"""


def test_an_analysis_that_always_raises_fails_the_run_as_at_home(tmp_path: Path) -> None:
    """Cerebro.run itself asks every analyzer for its analysis at the end (for its writers):
    plain Backtrader raises there, and the sandbox reports that as the strategy's error."""
    job, result, _ = harness_run(tmp_path, ALWAYS_RAISES, [])
    with pytest.raises(ValueError, match="no analysis today"):
        plain_analyses(job, ALWAYS_RAISES, {}, COSTLY, [])
    assert result["outcome"] == "runtime_error"
    assert result["error"]["exc_type"] == "ValueError"
    assert result["error"]["message"] == "no analysis today"
    assert "in get_analysis" in result["error"]["traceback"]


def test_a_builtin_analyzer_that_fails_on_its_params_is_named(tmp_path: Path) -> None:
    """VWR with sdev_max 0 divides by zero in Backtrader's own code, as it does at home; the
    message says which analyzer and where to change it."""
    specs = [{"name": "VWR", "params": {"sdev_max": 0}}]
    job, result, _ = harness_run(tmp_path, SMA_CROSS, specs, DAILY_2006, SMA_PARAMS)
    with pytest.raises(ZeroDivisionError):
        plain_analyses(job, SMA_CROSS, SMA_PARAMS, COSTLY, specs)
    assert result["outcome"] == "runtime_error"
    assert result["error"]["message"] == (
        "float division by zero: raised inside Backtrader's VWR analyzer: change or drop its "
        "params in config.analyzers"
    )


# --- what the host accepts --------------------------------------------------------------------

CLAIM = {
    "protocol": 1, "outcome": "completed", "backtrader_version": "1.9.78.123", "bars": 1,
    "final_value": 1.0, "final_cash": 1.0, "bars_in_market": 0,
    "equity_curve": [["2006-01-02T00:00:00", 1.0]], "trades": [], "open_trades": 0,
    "orders": [], "orders_total": 0, "open_positions": [],
}  # fmt: skip


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def claim_with(**fields: Any) -> CompletedClaim:
    claim = parse_claim(json.dumps({**CLAIM, **fields}).encode(), expected_bars=1)
    assert isinstance(claim, CompletedClaim)
    return claim


def test_the_host_accepts_plain_json_within_the_bounds() -> None:
    analyzers = {"a": {"x": [1, 2.5, None, True, "s"]}, "deep": nested(32), "n": 2**63 - 1}
    claim = claim_with(analyzers=analyzers, analyzer_errors={"b": "ValueError: no"})
    assert claim.analyzers == analyzers and claim.analyzer_errors == {"b": "ValueError: no"}
    assert claim_with().analyzers == {}  # a result without them (the referee's shape)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"analyzers": {"a": nested(33)}}, "analyzers.a: Value error, nested more than 32"),
        ({"analyzers": {"a": 2**64}}, "integer beyond 64 bits"),
        ({"analyzers": {"a": "s" * 20_000}}, "a string longer than 16384"),
        ({"analyzers": {"a": {"k" * 300: 1}}}, "a key longer than 256"),
        ({"analyzers": {"a": ["s" * 9000] * 30}}, "over 262144 bytes of JSON"),
        ({"analyzers": {str(i): ["s" * 9000] * 25 for i in range(5)}},
         "analyzers: over 1048576 bytes of JSON together"),
        ({"analyzers": {"": 1}}, "String should have at least 1 character"),
        ({"analyzers": {"a": 1}, "analyzer_errors": {"a": "x"}}, "also has a value"),
        ({"analyzer_errors": {"a": 1}}, "analyzer_errors.a: Input should be a valid string"),
        ({"analyzers": {str(i): 1 for i in range(65)}}, "at most 64 items"),
        ({"analyzers": {str(i): 1 for i in range(40)},
          "analyzer_errors": {f"e{i}": "x" for i in range(40)}}, "more than 64"),
        ({"analyzers": []}, "analyzers: Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_the_host_refuses_analyses_past_the_bounds(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidClaim) as caught:
        claim_with(**fields)
    assert message in str(caught.value)


def test_the_claim_comparison_leaves_the_analyzers_out() -> None:
    """The referee runs none: a strategy's analyzers never make its claim a mismatch."""
    referee = claim_with()
    strategy = claim_with(analyzers={"SQN": {"sqn": 1.0}}, analyzer_errors={"x": "no"})
    assert _claim_matches(strategy, referee, refused=False)
    assert not _claim_matches(strategy.model_copy(update={"final_value": 2.0}), referee,
                              refused=False)  # fmt: skip


# --- what a status answer carries -------------------------------------------------------------


def result_with(analyzers: dict[str, Any], errors: dict[str, str]) -> BacktestResult:
    return BacktestResult(
        backtest_id="b", status=JobStatus.COMPLETED, metrics={}, equity_curve=[], trade_log=[],
        logs="", execution_time_seconds=0.0,
        data=DataInfo(source="file", bars=0, first="", last="", sha256=""),
        provenance=Provenance(code_sha256="", config_sha256="", runner_image=""),
        analyzers=analyzers, analyzer_errors=errors, analyzers_source="strategy_process",
    )  # fmt: skip


def test_the_compact_view_keeps_small_analyses_and_names_the_rest() -> None:
    big = {str(i): float(i) for i in range(2000)}  # a TimeReturn-sized value
    analyzers = {"SharpeRatio": {"sharperatio": 0.5}, "TimeReturn": big, "SQN": {"sqn": 1.0}}
    errors = {"Mine": "ValueError: " + "e" * 1000}
    result = result_with(analyzers, errors)
    compact = views.result_view(result, cached=False, full=False)
    assert compact.analyzers == {"SharpeRatio": {"sharperatio": 0.5}, "SQN": {"sqn": 1.0}}
    assert compact.analyzers_omitted == ["TimeReturn"]
    assert compact.analyzer_errors == {"Mine": ("ValueError: " + "e" * 1000)[:200]}
    assert (compact.analyzers_source, compact.analyzers_verified) == ("strategy_process", False)
    assert len(compact.model_dump_json()) < 4 * 1024
    full = views.result_view(result, cached=False, full=True)
    assert (full.analyzers, full.analyzer_errors, full.analyzers_omitted) == (
        analyzers, errors, [],
    )  # fmt: skip


def test_the_compact_view_stays_small_whatever_the_strategy_registers() -> None:
    analyzers = {f"a{i}": {"x": "v" * 3000} for i in range(40)}
    errors = {f"e{i}": "m" * 1024 for i in range(24)}
    compact = views.result_view(result_with(analyzers, errors), cached=False, full=False)
    assert len(json.dumps(compact.analyzers)) + len(json.dumps(compact.analyzer_errors)) <= 3072
    assert len(compact.analyzers_omitted) == 64 - len(compact.analyzers) - len(
        compact.analyzer_errors
    )


def test_the_declared_config_schema_takes_both_spellings_and_has_no_dangling_refs() -> None:
    """Tools nest the config's schema in their input schema: a `$ref` would dangle there."""
    import jsonschema

    from backtest_sandbox.api.config_document import config_input_schema

    schema = config_input_schema()
    assert "$ref" not in json.dumps(schema)
    base = {"symbol": "ORCL", "timeframe": "D1", "start_date": "2006-01-01",
            "end_date": "2007-01-01"}  # fmt: skip
    good = ["SQN", {"name": "TimeReturn", "params": {"timeframe": "Months"}}]
    jsonschema.validate({**base, "analyzers": good}, schema)
    for bad in (["Sharpe"], [{"name": "SQN", "colour": 1}], [{"params": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**base, "analyzers": bad}, schema)
