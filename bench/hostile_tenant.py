"""One tenant hammers the server; does the other notice? (issue 11, "bounded cost per request")

    .venv/bin/python bench/hostile_tenant.py            # the figures in the README
    .venv/bin/python bench/hostile_tenant.py --quick    # smaller result, shorter load

Starts `backtest-sandbox serve --transport http` with two tenants, through the official MCP
client as users call it. Tenant A first makes a huge result (a strategy that does nothing, on
synthetic one-minute bars over years: hundreds of thousands of equity points). Then, for a
while, tenant A runs four loops at once: reading that result's charts and its whole status,
paging its orders, and submitting more synthetic one-minute runs. Meanwhile tenant B calls
get_queue_stats, as a dashboard would. Printed: B's p50 and p99 alone and under A's load,
side by side in one run, the ratio, and the server's RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

TOKEN_A, TOKEN_B = "hostile-tenant-token-aaaaaaaa", "patient-tenant-token-bbbbbbbb"
NOOP = "import backtrader as bt\n\nclass Noop(bt.Strategy):\n    pass\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def connect(url: str, token: str) -> Any:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=300)
    return http, Client(streamable_http_client(url, http_client=http), read_timeout_seconds=600)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    return dict(result.structured_content or {})


async def latencies(client: Client, seconds: float) -> list[float]:
    """get_queue_stats, back to back, for `seconds`: each call's time in ms."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        await call(client, "get_queue_stats")
        times.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    return times


async def hostile(client: Client, big: str, stop: asyncio.Event, n: int) -> int:
    """One of tenant A's loops; how many calls it made."""
    calls = 0
    year = 2000 + n
    while not stop.is_set():
        for tool, arguments in (
            ("read_backtest_chart", {"backtest_id": big, "name": "equity"}),
            ("read_backtest_chart", {"backtest_id": big, "name": "drawdown"}),
            ("get_backtest_status", {"backtest_id": big, "full": True}),
            ("read_backtest_orders", {"backtest_id": big, "start": 0, "end": 500}),
            ("run_backtest", {"code_content": NOOP + f"# {year} {calls}\n", "config": {
                "symbol": "SYNTH", "timeframe": "M1", "start_date": f"{year}-01-01",
                "end_date": f"{year + 19}-12-31", "data_source": "synthetic",
                "timeout_seconds": 30}}),
        ):
            await client.call_tool(tool, arguments)
            calls += 1
    return calls


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    p50 = statistics.median(ordered)
    return f"{name:<28} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   n={len(values)}"


async def main_async(quick: bool) -> None:
    years = 1 if quick else 6  # 6 years: ~610,000 points, a result just under the 32 MiB cap
    load_seconds = 20 if quick else 60
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    env = {
        **os.environ,
        "BACKTEST_STATE_DIR": str(state / "state"),
        "BACKTEST_DATA_DIR": str(state / "data"),
        "BACKTEST_API_TOKENS": f"{TOKEN_A}:tenant_a,{TOKEN_B}:tenant_b",
        "BACKTEST_MAX_WORKERS": "2",
        "BACKTEST_POOL_SIZE": "0",
    }
    log = (state / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "backtest_sandbox", "serve", "--transport", "http",
         "--port", str(port)], env=env, stdout=log, stderr=log,
    )
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        http_a, client_a = connect(url, TOKEN_A)
        http_b, client_b = connect(url, TOKEN_B)
        async with http_a, http_b, client_a as a, client_b as b:
            print(f"making the big result ({years} years of synthetic M1 bars) ...", flush=True)
            big = await call(a, "run_backtest", code_content=NOOP, wait=True, config={
                "symbol": "SYNTH", "timeframe": "M1", "start_date": "2012-01-01",
                "end_date": f"{2011 + years}-12-31", "data_source": "synthetic",
                "timeout_seconds": 600, "memory_mb": 4096})
            assert big["status"] == "completed", big
            points = big["result"]["equity_curve_total"]
            print(f"  {points} equity points", flush=True)
            rss_before = rss_mb(server.pid)
            alone = await latencies(b, load_seconds / 2)
            stop = asyncio.Event()
            loops = [asyncio.create_task(hostile(a, big["backtest_id"], stop, n))
                     for n in range(4)]
            loaded = await latencies(b, load_seconds)
            stop.set()
            calls = sum(await asyncio.gather(*loops))
            rss_after = rss_mb(server.pid)
        print()
        print(summary("tenant B alone", alone))
        print(summary("tenant B, A hammering", loaded))
        p99 = sorted(loaded)[int(0.99 * (len(loaded) - 1))]
        ratio = p99 / sorted(alone)[int(0.99 * (len(alone) - 1))]
        print(f"tenant A made {calls} calls on a {points}-point result")
        print(f"p99 under load / p99 alone: {ratio:.2f}x   (target: p99 under load < 200 ms:"
              f" {'held' if p99 < 200 else 'MISSED'})")
        print(f"server RSS: {rss_before:.0f} MB before the load, {rss_after:.0f} MB after")
    finally:
        server.terminate()
        server.wait(60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller result, a shorter load")
    asyncio.run(main_async(parser.parse_args().quick))


if __name__ == "__main__":
    main()
