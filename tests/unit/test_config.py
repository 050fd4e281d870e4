"""Config validation: every broken rule names the field."""

from __future__ import annotations

import pytest

from backtest_sandbox.domain.config import parse_config
from backtest_sandbox.domain.errors import InvalidRequest
from backtest_sandbox.domain.timeframes import Timeframe

BASE = {"symbol": "ORCL", "timeframe": "D1", "start_date": "2000-01-01", "end_date": "2001-01-01"}


def parse(**overrides):
    return parse_config({**BASE, **overrides}, max_timeout_seconds=600, max_memory_mb=4096)


def test_defaults():
    config = parse()
    assert config.timeframe is Timeframe.D1
    assert (config.initial_capital, config.commission, config.slippage) == (10000.0, 0.0, 0.0)
    assert (config.position_size, config.contract_size, config.stake) == (1.0, 1.0, 1.0)
    assert (config.timeout_seconds, config.memory_mb, config.data_source) == (120.0, 512, "auto")


@pytest.mark.parametrize("value", [16408, "16408", "D1", "d1"])
def test_timeframe_by_code_or_name(value):
    assert parse(timeframe=value).timeframe is Timeframe.D1


NESTED_17: list[object] = []
for _ in range(15):
    NESTED_17 = [NESTED_17]


@pytest.mark.parametrize(
    "overrides,field,rule",
    [
        ({"symbol": ""}, "config.symbol", "letters, digits and _"),
        ({"symbol": "OR CL"}, "config.symbol", "letters, digits and _"),
        ({"timeframe": 7}, "config.timeframe", "not an MT5 timeframe"),
        ({"timeframe": "D2"}, "config.timeframe", "not an MT5 timeframe"),
        ({"timeframe": True}, "config.timeframe", "boolean"),
        ({"end_date": "1999-01-01"}, "config", "end_date must be after start_date"),
        ({"start_date": "2000-13-01"}, "config.start_date", "date"),
        ({"initial_capital": 0}, "config.initial_capital", "greater than 0"),
        ({"commission": -0.1}, "config.commission", "greater than or equal to 0"),
        ({"position_size": 0.001}, "config.position_size", "greater than or equal to 0.01"),
        ({"position_size": 101}, "config.position_size", "less than or equal to 100"),
        ({"contract_size": 0}, "config.contract_size", "greater than 0"),
        ({"timeout_seconds": 0}, "config.timeout_seconds", "greater than 0"),
        ({"timeout_seconds": 601}, "config.timeout_seconds", "server's maximum 600"),
        ({"memory_mb": 64}, "config.memory_mb", "greater than or equal to 128"),
        ({"memory_mb": 8192}, "config.memory_mb", "server's maximum 4096"),
        ({"data_source": "web"}, "config.data_source", "'auto', 'file' or 'synthetic'"),
        ({"params": {"x": float("nan")}}, "config.params", "plain JSON"),
        ({"colour": "red"}, "config.colour", "unknown field"),
        # Bounds that keep every derived number finite (an order of 1e309 units is inf).
        ({"position_size": 100, "contract_size": 1e307}, "config.contract_size",
         "position_size x contract_size must be at most 1e+12 units (got inf)"),
        ({"initial_capital": 1e300}, "config.initial_capital", "less than or equal to"),
        ({"symbol": "A" * 33}, "config.symbol", "1 to 32 letters, digits and _"),
        ({"params": {"x": NESTED_17}}, "config.params", "at most 16 levels deep"),
        ({"params": {"x": "y" * 70_000}}, "config.params", "at most 65536 bytes"),
    ],
)
def test_broken_rules_name_the_field(overrides, field, rule):
    with pytest.raises(InvalidRequest) as caught:
        parse(**overrides)
    assert caught.value.field == field
    assert rule in str(caught.value)
    assert str(caught.value).startswith(field)


def test_missing_required_field_is_named():
    with pytest.raises(InvalidRequest, match=r"^config\.symbol: Field required"):
        parse_config(
            {k: v for k, v in BASE.items() if k != "symbol"},
            max_timeout_seconds=600,
            max_memory_mb=4096,
        )


def test_not_an_object():
    with pytest.raises(InvalidRequest, match="^config: must be a JSON object"):
        parse_config([1], max_timeout_seconds=600, max_memory_mb=4096)


def test_canonical_hash_is_stable_across_spellings():
    assert parse(timeframe=16408).sha256() == parse(timeframe="d1").sha256()
    assert parse().sha256() != parse(commission=0.001).sha256()


# --- analyzers: Backtrader's built-ins by name, with their params -------------------------------


def test_analyzers_by_name_or_with_params():
    config = parse(
        analyzers=["SharpeRatio", {"name": "TimeReturn", "params": {"timeframe": "Months"}}]
    )
    assert [(spec.name, spec.params) for spec in config.analyzers] == [
        ("SharpeRatio", {}),
        ("TimeReturn", {"timeframe": "Months"}),
    ]
    # A bare name is the spec without params: both spellings hash alike.
    assert (
        config.sha256()
        == parse(
            analyzers=[
                {"name": "SharpeRatio"},
                {"name": "TimeReturn", "params": {"timeframe": "Months"}},
            ]
        ).sha256()
    )
    assert parse().analyzers == []


KNOWN = "the known ones are AnnualReturn, Calmar, DrawDown"


@pytest.mark.parametrize(
    "analyzers,field,rule",
    [
        (["Sharpe"], "config.analyzers.0", f"unknown analyzer 'Sharpe'; {KNOWN}"),
        (["SQN", "sqn"], "config.analyzers.1", "unknown analyzer 'sqn'"),
        (["SQN", "DrawDown", "SQN"], "config.analyzers", "item 2 repeats SQN"),
        ([5], "config.analyzers", "item 0 must be an analyzer name or {name, params}"),
        ("SQN", "config.analyzers", "valid list"),
        (["SQN"] * 21, "config.analyzers", "at most 20 items"),
        ([{"name": "SQN", "colour": 1}], "config.analyzers.0.colour", "unknown field"),
        ([{"name": "SQN", "params": {"period": 3}}], "config.analyzers.0",
         "params.period: SQN has no such param (it takes: none)"),
        ([{"name": "SharpeRatio", "params": {"riskfree": 0}}], "config.analyzers.0",
         "params.riskfree: SharpeRatio has no such param (it takes: timeframe, compression, "
         "riskfreerate,"),
        ([{"name": "SharpeRatio", "params": {"timeframe": "Day"}}], "config.analyzers.0",
         "params.timeframe: must be one of Ticks, MicroSeconds, Seconds, Minutes, Days,"),
        ([{"name": "SharpeRatio", "params": {"riskfreerate": "1%"}}], "config.analyzers.0",
         "params.riskfreerate: must be a boolean, a finite number or null"),
        ([{"name": "SharpeRatio", "params": {"riskfreerate": float("inf")}}],
         "config.analyzers.0", "params.riskfreerate: must be a boolean, a finite number"),
        ([{"name": "TimeReturn", "params": {"data": 1}}], "config.analyzers.0",
         "params.data: TimeReturn has no such param"),
    ],
)  # fmt: skip
def test_analyzer_rules_name_the_field(analyzers, field, rule):
    with pytest.raises(InvalidRequest) as caught:
        parse(analyzers=analyzers)
    assert caught.value.field == field
    assert rule in str(caught.value)
