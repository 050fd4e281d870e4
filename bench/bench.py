"""Sandboxed runs against the bare baseline, measured side by side in one run (issue 6).

    .venv/bin/python bench/bench.py            # the figures in the README
    .venv/bin/python bench/bench.py --quick    # a smoke run with few repetitions

The reference: the SMA crossover of examples/sma_cross.py on 2520 daily ORCL bars. The
baseline: `python bench/bare_strategy.py` run cold on the host (a fresh interpreter each time)
with the same bars and the same Backtrader. Everything is a ratio measured in this one run:
this machine is shared and noisy, so absolute times mean little.

  (a) latency, submit -> completed through the service, pool on and off, p50 and p95, each
      divided by the bare p50: fast mode, and verified mode with the pool on;
  (b) throughput: 40 runs submitted at once (2 workers), wall time divided by that of 40
      bare runs two at a time;
  (c) CPU seconds per run beyond the bare run's own (container, daemon, supervisor), from
      the machine's busy time during (b);
  (d) the server's RSS before and after 200 runs;
  (e) get_backtest_status's answer time while 20 jobs submitted at once run (issue 4);
  (f) verified over fast on ~50,000 synthetic 5-minute bars (issue 12), pool on;
  (g) a sweep of 50 combinations (issue 13) over 50 separate run_backtest calls of the same
      combinations submitted at once, wall time to the last result, pool on: verified (the
      target), then fast;
  (h) the fast path as an agent sees it (issue 12): run_backtest(wait=true) through the
      official MCP client over streamable HTTP to `serve`, pool on, a 1 s pause between runs,
      p50 over the bare p50.

(b) to (e) run in fast mode, as they were first measured; (a) and (f) compare the modes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backtest_sandbox.data.catalog import import_file, prepare
from backtest_sandbox.domain.config import parse_config
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.domain.timeframes import Timeframe
from backtest_sandbox.jobs.engine import Engine
from backtest_sandbox.jobs.service import BacktestService

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BACKTEST_SHARED_DATA", REPO.parent / "shared/data/backtrader"))
STRATEGY = (REPO / "examples/sma_cross.py").read_text()
BARE = REPO / "bench/bare_strategy.py"
CONFIG = {
    "symbol": "ORCL",
    "timeframe": "D1",
    "start_date": "1999-12-27",  # with end_date: exactly 2520 daily bars
    "end_date": "2009-12-31",
    "initial_capital": 10000,
    "commission": 0.001,
    "position_size": 100,
    "timeout_seconds": 120,
}
TENANT = "bench"
# (f): about 50,000 synthetic 5-minute bars; the count is printed with the figure.
LONG_CONFIG = {
    "symbol": "SYN",
    "timeframe": "M5",
    "start_date": "2020-01-01",
    "end_date": "2022-06-14",
    "data_source": "synthetic",
    "initial_capital": 100000,
    "position_size": 10,
    "timeout_seconds": 600,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent not idle (all processes, the daemon included)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Bench:
    def __init__(self, root: Path, runtime: str) -> None:
        self.data_dir = root / "data"
        import_file(SHARED / "orcl-1995-2014.txt", "ORCL", Timeframe.D1, self.data_dir)
        self.state_root = root
        self.runtime = runtime
        config = parse_config(CONFIG, max_timeout_seconds=600, max_memory_mb=4096)
        prepared = prepare(config, self.data_dir)
        assert prepared.bars == 2520, prepared.bars
        self.csv = root / "bars.csv"
        self.csv.write_bytes(prepared.csv_bytes)
        self.counter = 0

    # -- the bare baseline -------------------------------------------------------------
    def bare_run(self) -> tuple[float, float]:
        """(wall seconds, final value) of one cold `python bare_strategy.py`."""
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, str(BARE), str(self.csv), "10000", "0.001", "100"],
            capture_output=True,
            text=True,
            check=True,
        )
        return time.perf_counter() - started, float(out.stdout.strip())

    # -- the service -------------------------------------------------------------------
    def service(self, pool_size: int, workers: int = 2) -> BacktestService:
        settings = Settings(
            data_dir=self.data_dir,
            state_dir=Path(tempfile.mkdtemp(dir=self.state_root)),
            max_workers=workers,
            pool_size=pool_size,
            runtime=self.runtime,  # type: ignore[arg-type]
        )
        service = BacktestService(settings, Engine(settings))
        service.start()
        return service

    def submit(
        self, service: BacktestService, mode: str = "fast", config: dict[str, Any] = CONFIG
    ) -> tuple[str, float]:
        # A new comment per run: identical submissions would be answered from the cache.
        self.counter += 1
        code = f"{STRATEGY}\n# run {self.counter}\n"
        submitted = time.time()
        backtest_id = service.submit(TENANT, code, "python", {**config, "mode": mode}).backtest_id
        return backtest_id, submitted

    def wait_done(self, service: BacktestService, backtest_id: str) -> tuple[float, float]:
        """(finished_at, final value) once the job is terminal. Woken by the store's write, as
        the MCP server's waiting calls are: a polling loop here would take CPU from the run."""
        summary = service.wait(TENANT, backtest_id, lambda job: job.status.is_terminal, 600)
        status = service.status(TENANT, backtest_id)
        assert status.status == "completed" and status.result is not None, status.error
        assert summary.finished_at is not None
        final_value = status.result.metrics["final_value"]
        assert isinstance(final_value, float)
        return summary.finished_at, final_value


def wait_for_pool(service: BacktestService, size: int, settle: float = 1.0) -> None:
    """Until the pool is full and its newest container has had time to finish its imports."""
    engine = service._engine  # noqa: SLF001 - the bench looks inside on purpose
    pool = engine.runner.pool  # started with the engine's first run
    if pool is None or size == 0:
        return
    deadline = time.monotonic() + 60
    while pool.idle_count() < size and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(settle)


def measure_latency(
    bench: Bench, pool_size: int, runs: int, bare_value: float, mode: str = "fast"
) -> list[float]:
    service = bench.service(pool_size)
    try:
        latencies = []
        for _ in range(runs):
            wait_for_pool(service, pool_size)  # an agent's think time between iterations
            backtest_id, submitted = bench.submit(service, mode)
            finished, value = bench.wait_done(service, backtest_id)
            assert abs(value - bare_value) < 1e-6, (value, bare_value)
            latencies.append(finished - submitted)
        return latencies
    finally:
        service.close()


BACKGROUND_SAMPLE_SECONDS = 3.0


def timed_batch(run_all: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, busy CPU seconds) of one batch, less the machine's background load.

    The background rate is sampled while nothing of ours runs, just before the batch, and
    subtracted for the batch's duration: what other processes burn is not ours.
    """
    cpu = busy_cpu_seconds()
    time.sleep(BACKGROUND_SAMPLE_SECONDS)
    background_rate = (busy_cpu_seconds() - cpu) / BACKGROUND_SAMPLE_SECONDS
    cpu, wall = busy_cpu_seconds(), time.perf_counter()
    run_all()
    wall = time.perf_counter() - wall
    return wall, busy_cpu_seconds() - cpu - background_rate * wall


def measure_throughput(bench: Bench, runs: int) -> dict[str, float]:
    def bare_batch() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as executor:
            list(executor.map(lambda _: bench.bare_run(), range(runs)))

    service = bench.service(pool_size=2)
    try:
        wait_for_pool(service, 2)

        def sandbox_batch() -> None:  # ends when the last job is done; the refill is not timed
            ids = [bench.submit(service)[0] for _ in range(runs)]
            for backtest_id in ids:
                bench.wait_done(service, backtest_id)

        sandbox_wall, sandbox_cpu = timed_batch(sandbox_batch)
    finally:
        service.close()
    bare_wall, bare_cpu = timed_batch(bare_batch)
    return {
        "sandbox_wall": sandbox_wall,
        "bare_wall": bare_wall,
        "sandbox_cpu_per_run": sandbox_cpu / runs,
        "bare_cpu_per_run": bare_cpu / runs,
    }


def measure_status_latency(bench: Bench, runs: int) -> list[float]:
    """get_backtest_status's answer time (ms) while `runs` jobs, submitted at once, run."""
    service = bench.service(pool_size=2)
    latencies: list[float] = []
    try:
        ids = [bench.submit(service)[0] for _ in range(runs)]
        pending = list(ids)
        while pending:
            for backtest_id in ids:
                started = time.perf_counter()
                status = service.status(TENANT, backtest_id)
                latencies.append((time.perf_counter() - started) * 1000)
                if status.status in ("completed", "failed") and backtest_id in pending:
                    pending.remove(backtest_id)
            time.sleep(0.01)
        return latencies
    finally:
        service.close()


def measure_rss(bench: Bench, runs: int) -> tuple[float, float]:
    service = bench.service(pool_size=2)
    try:

        def batch(n: int) -> None:
            ids = [bench.submit(service)[0] for _ in range(n)]
            for backtest_id in ids:
                bench.wait_done(service, backtest_id)

        batch(10)  # warm-up: imports, caches, SQLite pages
        before = rss_mb()
        for _ in range(runs // 20):
            batch(20)
        return before, rss_mb()
    finally:
        service.close()


def measure_long_run(bench: Bench, runs: int) -> dict[str, float]:
    """(f) The median seconds of a fast and of a verified run on ~50,000 M5 bars, and the
    bar count, alternating the modes so that the machine's drift hits both alike."""
    service = bench.service(2)
    seconds: dict[str, list[float]] = {"fast": [], "verified": []}
    values: dict[str, float] = {}
    try:
        for _ in range(runs):
            for mode in seconds:
                wait_for_pool(service, 2)
                backtest_id, submitted = bench.submit(service, mode, LONG_CONFIG)
                finished, values[mode] = bench.wait_done(service, backtest_id)
                seconds[mode].append(finished - submitted)
        bars = service.status(TENANT, backtest_id).result.data.bars  # type: ignore[union-attr]
    finally:
        service.close()
    assert values["fast"] == values["verified"], values
    return {
        "fast": statistics.median(seconds["fast"]),
        "verified": statistics.median(seconds["verified"]),
        "bars": bars,
    }


SWEEP_GRID = {"fast": [4, 6, 8, 10, 12], "slow": [20, 25, 30, 35, 40, 45, 50, 55, 60, 65]}


def measure_sweep(bench: Bench, mode: str) -> dict[str, float]:
    """(g) Wall seconds of one sweep over SWEEP_GRID and of the same combinations as separate
    run_backtest calls submitted at once, each through the service, in `mode`, pool on."""
    combinations = [
        {"fast": fast, "slow": slow} for fast in SWEEP_GRID["fast"] for slow in SWEEP_GRID["slow"]
    ]
    service = bench.service(pool_size=2)
    try:
        wait_for_pool(service, 2)
        started = time.perf_counter()
        ids = [
            service.submit(
                TENANT,
                f"{STRATEGY}\n# separate {mode}\n",
                "python",
                {**CONFIG, "mode": mode, "params": p},
            ).backtest_id
            for p in combinations
        ]
        for backtest_id in ids:
            bench.wait_done(service, backtest_id)
        separate = time.perf_counter() - started
        wait_for_pool(service, 2)
        started = time.perf_counter()
        sweep_id = service.submit_sweep(
            TENANT,
            f"{STRATEGY}\n# sweep {mode}\n",
            "python",
            {**CONFIG, "mode": mode},
            grid=SWEEP_GRID,
        ).sweep_id
        while not service.summary(TENANT, sweep_id).status.is_terminal:
            time.sleep(0.01)
        swept = time.perf_counter() - started
        answer, _ = service.sweep_status(TENANT, sweep_id)
        assert answer.status == "completed" and answer.done == len(combinations), answer
    finally:
        service.close()
    return {"combinations": len(combinations), "separate": separate, "sweep": swept}


HTTP_TOKEN = "bench-token-0123456789abcdef"


def measure_mcp_http(bench: Bench, runs: int, mode: str = "fast") -> list[float]:
    """(h) Seconds from the call to its answer of run_backtest(wait=true), through the MCP
    client over HTTP, one run at a time with a 1 s pause between them (an agent reading)."""
    import anyio
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    port = _free_port()
    env = {
        **os.environ,
        "BACKTEST_DATA_DIR": str(bench.data_dir),
        "BACKTEST_STATE_DIR": tempfile.mkdtemp(dir=bench.state_root),
        "BACKTEST_MAX_WORKERS": "2",
        "BACKTEST_POOL_SIZE": "2",
        "BACKTEST_RUNTIME": bench.runtime,
        "BACKTEST_API_TOKENS": f"{HTTP_TOKEN}:{TENANT}",
    }
    command = [
        sys.executable,
        "-m",
        "backtest_sandbox",
        "serve",
        "--transport",
        "http",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    async def drive() -> list[float]:
        headers = {"Authorization": f"Bearer {HTTP_TOKEN}"}
        url = f"http://127.0.0.1:{port}/mcp"
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(
                streamable_http_client(url, http_client=http), read_timeout_seconds=120
            ) as client,
        ):
            seconds = []
            for index in range(runs + 1):  # the first one warms the pool up: not counted
                await anyio.sleep(1.0 if index else 5.0)
                bench.counter += 1
                code = f"{STRATEGY}\n# mcp {bench.counter}\n"
                started = time.perf_counter()
                result = await client.call_tool(
                    "run_backtest",
                    {"code_content": code, "config": {**CONFIG, "mode": mode}, "wait": True},
                )
                elapsed = time.perf_counter() - started
                status = result.structured_content or {}
                assert status.get("status") == "completed", result.content
                if index:
                    seconds.append(elapsed)
            return seconds

    try:
        _wait_listening(port)
        return anyio.run(drive)
    finally:
        server.terminate()
        server.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke run")
    parser.add_argument("--runtime", default="runc", choices=["runc", "runsc"])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    latency_runs, batch_runs, rss_runs = (4, 6, 20) if args.quick else (15, 40, 200)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        bench = Bench(Path(tmp), args.runtime)
        bare = [bench.bare_run() for _ in range(max(5, latency_runs))]
        bare_p50 = statistics.median(t for t, _ in bare)
        bare_value = bare[0][1]
        pool_off = measure_latency(bench, 0, latency_runs, bare_value)
        pool_on = measure_latency(bench, 2, latency_runs, bare_value)
        verified_on = measure_latency(bench, 2, latency_runs, bare_value, "verified")
        long_run = measure_long_run(bench, 1 if args.quick else 3)
        sweep = measure_sweep(bench, "verified")
        fast_sweep = measure_sweep(bench, "fast")
        mcp_http = measure_mcp_http(bench, latency_runs)
        throughput = measure_throughput(bench, batch_runs)
        status_ms = measure_status_latency(bench, 20)
        rss_before, rss_after = measure_rss(bench, rss_runs)

    figures: dict[str, Any] = {
        "runtime": args.runtime,
        "bare_p50_seconds": bare_p50,
        "pool_on_p50_ratio": statistics.median(pool_on) / bare_p50,
        "pool_on_p95_ratio": percentile(pool_on, 95) / bare_p50,
        "pool_off_p50_ratio": statistics.median(pool_off) / bare_p50,
        "pool_off_p95_ratio": percentile(pool_off, 95) / bare_p50,
        "verified_pool_on_p50_ratio": statistics.median(verified_on) / bare_p50,
        "verified_pool_on_p95_ratio": percentile(verified_on, 95) / bare_p50,
        "verified_over_fast_pool_on_p50": statistics.median(verified_on)
        / statistics.median(pool_on),
        "long_run_bars": long_run["bars"],
        "long_run_fast_seconds": long_run["fast"],
        "long_run_verified_over_fast": long_run["verified"] / long_run["fast"],
        "sweep_over_separate": sweep["sweep"] / sweep["separate"],
        "fast_sweep_over_separate": fast_sweep["sweep"] / fast_sweep["separate"],
        "mcp_http_pool_on_p50_ratio": statistics.median(mcp_http) / bare_p50,
        "sweep_separate_seconds": sweep["separate"],
        "throughput_ratio": throughput["sandbox_wall"] / throughput["bare_wall"],
        "overhead_cpu_seconds_per_run": throughput["sandbox_cpu_per_run"]
        - throughput["bare_cpu_per_run"],
        "bare_cpu_seconds_per_run": throughput["bare_cpu_per_run"],
        "status_p50_ms": statistics.median(status_ms),
        "status_p99_ms": percentile(status_ms, 99),
        "rss_growth_mb": rss_after - rss_before,
        "rss_before_mb": rss_before,
        "runs": {"latency": latency_runs, "batch": batch_runs, "rss": rss_runs},
    }
    print(f"runtime {args.runtime}; bare `python strategy.py` p50 {bare_p50:.3f} s (= 1.0)")
    print("(a) latency, submit -> completed, over the bare p50   target  measured")
    print(
        f"    pool on   p50                                     <= 0.5    "
        f"{figures['pool_on_p50_ratio']:.2f}"
    )
    print(
        f"    pool on   p95                                     <= 0.8    "
        f"{figures['pool_on_p95_ratio']:.2f}"
    )
    print(
        f"    pool off  p50                                              "
        f"{figures['pool_off_p50_ratio']:.2f}"
    )
    print(
        f"    pool off  p95                                              "
        f"{figures['pool_off_p95_ratio']:.2f}"
    )
    print(
        f"    verified, pool on p50                             <= 1.0    "
        f"{figures['verified_pool_on_p50_ratio']:.2f}"
    )
    print(
        f"    verified, pool on p95                                      "
        f"{figures['verified_pool_on_p95_ratio']:.2f}"
    )
    print(
        f"    verified over fast, pool on p50                            "
        f"{figures['verified_over_fast_pool_on_p50']:.2f}"
    )
    print(
        f"(b) throughput, {batch_runs} at once over {batch_runs} bare two at a time  <= 1.3    "
        f"{figures['throughput_ratio']:.2f}"
    )
    print(
        f"(c) CPU s per run beyond the bare run's {figures['bare_cpu_seconds_per_run']:.2f} s"
        f"                {figures['overhead_cpu_seconds_per_run']:.2f}"
    )
    print(
        f"(d) server RSS over {rss_runs} runs: {rss_before:.1f} -> {rss_after:.1f} MB"
        f"      < 20 MB   {figures['rss_growth_mb']:+.1f} MB"
    )
    print(
        f"(e) get_backtest_status while 20 run: p50 {figures['status_p50_ms']:.2f} ms, p99"
        f"          < 50 ms   {figures['status_p99_ms']:.2f} ms"
    )
    print(
        f"(f) verified over fast on {figures['long_run_bars']} M5 bars (fast "
        f"{figures['long_run_fast_seconds']:.1f} s)       <= 2.5    "
        f"{figures['long_run_verified_over_fast']:.2f}"
    )
    print(
        f"(g) a sweep of {sweep['combinations']} over as many run_backtest calls "
        f"({sweep['separate']:.1f} s) <= 0.35   {figures['sweep_over_separate']:.2f}"
    )
    print(
        f"    the same in fast mode ({fast_sweep['separate']:.1f} s)                    "
        f"        {figures['fast_sweep_over_separate']:.2f}"
    )
    print(
        f"(h) fast path, MCP client over HTTP, wait=true, 1 s pause, p50  <= 0.5    "
        f"{figures['mcp_http_pool_on_p50_ratio']:.2f}"
    )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
