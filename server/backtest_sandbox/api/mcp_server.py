"""The MCP server (docs/interface.md section 1): every tool a thin call into `BacktestService`.

Service calls block (SQLite, result files, PNG rendering), so each runs on a worker thread and
the event loop stays free to answer other requests; reads whose cost grows with a result run
one at a time per tenant (`HeavyReads`). The package's own errors become tool errors whose
text names the field and the rule and whose structured content is `{type, field, rule}`
(docs/interface.md section 12). Anything else is a crash, and the SDK keeps its text on the
server.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ServerEvent
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, WithJsonSchema

from backtest_sandbox import __version__
from backtest_sandbox.domain.errors import BacktestSandboxError
from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs import views
from backtest_sandbox.jobs.audit import AUDIT_LOGGER
from backtest_sandbox.jobs.engine import Engine
from backtest_sandbox.jobs.service import BacktestService
from backtest_sandbox.jobs.store import JobSummary
from backtest_sandbox.jobs.sweeps import SweepStatus, SweepSubmitResponse
from backtest_sandbox.jobs.views import Catalog

from . import http_auth
from .charts import render_chart, render_heatmap
from .config_document import config_document, config_input_schema

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
CONFIG_URIS = ("backtest://config", "resources/backtest-config")
WAIT_POLL_SECONDS = 0.25  # the longest a waiting call sleeps between looks at its job
HEAVY_READS_PER_TENANT = 1  # see HeavyReads
MAX_WAIT_SECONDS = 3600.0  # a waiting call returns the current status after this long

P = ParamSpec("P")
R = TypeVar("R")
TenantResolver = Callable[[Context[Any, Any]], str]

INSTRUCTIONS = """\
Runs Backtrader strategies (Python source) in isolated, network-less containers.
Submit with run_backtest (read the backtest://config resource for the config rules), then poll
get_backtest_status (or listen on backtest://{id}), or pass wait=true to block until it
finishes (with progress notifications when you send a progress token). The status carries a
summary of the result; read_backtest(full=true) and the CSV resources give all of it; page the
trade log (or, with kind="orders", every order's life) with read_backtest_orders;
read_backtest_chart draws the equity or drawdown curve; list_data shows the market data. An
identical earlier run is answered from the cache. run_sweep runs a grid of parameters (with an
optional out-of-sample check) and get_sweep_status ranks the combinations.
"""

BacktestId = Annotated[str, Field(description="The id run_backtest returned (bt_...).")]
Full = Annotated[
    bool,
    Field(description="true: the whole equity curve, trade log and logs, not a cut-down view."),
]
ConfigArg = Annotated[
    Any,
    WithJsonSchema(
        config_input_schema()
        | {"description": "The backtest config; see the backtest://config resource."}
    ),
]
LanguageArg = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "enum": ["python", "mq5"],
            "default": "python",
            "description": "python runs; mq5 is accepted and fails with unsupported_language.",
        }
    ),
]
StatusArg = Annotated[
    str | None,
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "enum": [s.value for s in JobStatus]}, {"type": "null"}],
            "default": None,
            "description": "Only backtests with this status.",
        }
    ),
]


def _integer(description: str, default: int) -> WithJsonSchema:
    """An integer argument checked by the service, so that a wrong type gets the same
    `field: rule` message as a wrong value."""
    return WithJsonSchema({"type": "integer", "default": default, "description": description})


def _chart_schema(description: str) -> dict[str, Any]:
    return {"type": "string", "enum": ["equity", "drawdown"], "description": description}


# docs/interface.md section 12: what each tool may do, for clients that ask users to confirm.
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
SUBMITS = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
CANCELS = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)


class Refused(ToolError):
    """One of our errors, as a tool error that also carries its structured data."""

    def __init__(self, error: BacktestSandboxError) -> None:
        super().__init__(str(error))
        self.data = error.data()

    def result(self) -> CallToolResult:
        return CallToolResult(
            content=[TextContent(text=str(self))], structured_content=self.data, is_error=True
        )


async def _call(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a blocking service call on a worker thread; our errors become `Refused`.

    Raises:
        Refused: the service refused the call (invalid argument, unknown id, sandbox fault).
    """
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    except BacktestSandboxError as e:
        raise Refused(e) from e


def answers(model: type[BaseModel]) -> Callable[[Callable[P, Awaitable[Any]]], Any]:
    """Declare a tool's output schema as `model` and answer with structured content.

    The tool returns a `model` (or a CallToolResult whose structured content is one); a
    `Refused` becomes an error result whose structured content is `{type, field, rule}`.
    """

    def wrap(fn: Callable[P, Awaitable[Any]]) -> Callable[P, Awaitable[CallToolResult]]:
        @functools.wraps(fn)
        async def tool(*args: P.args, **kwargs: P.kwargs) -> CallToolResult:
            try:
                answer = await fn(*args, **kwargs)
            except Refused as e:
                return e.result()
            if isinstance(answer, CallToolResult):
                return answer
            data = answer.model_dump(mode="json")
            text = TextContent(text=json.dumps(data))
            return CallToolResult(content=[text], structured_content=data)

        signature = inspect.signature(fn, eval_str=True)
        tool.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation=Annotated[CallToolResult, model]
        )
        return tool

    return wrap


def _progress_message(job: JobSummary) -> str:
    if job.status is JobStatus.RUNNING and job.progress_total:
        return f"running: {job.progress_done or 0}/{job.progress_total} bars"
    return job.status.value


async def _wait(
    service: BacktestService, tenant: str, backtest_id: str, ctx: Context[Any, Any]
) -> None:
    """Poll until the job is finished, reporting progress (a no-op without a progress token).

    MCP requires each notification to increase: only a higher percentage is reported (a job
    re-run after a restart starts again from zero), and a finished job ends at 100.
    """
    reported = -1.0

    def moved(job: JobSummary) -> bool:
        return job.status.is_terminal or views.progress_percent(job) > reported

    with anyio.move_on_after(MAX_WAIT_SECONDS):
        while True:
            # Woken by the store's write the moment the job moves on, not a poll's later tick.
            job = await _call(service.wait, tenant, backtest_id, moved, WAIT_POLL_SECONDS)
            percent = 100.0 if job.status.is_terminal else views.progress_percent(job)
            if percent > reported:
                reported = percent
                await ctx.report_progress(percent, 100.0, _progress_message(job))
            if job.status.is_terminal:
                return


def build_server(
    service: BacktestService,
    *,
    tenant_of: TenantResolver = http_auth.local_tenant,
    access: http_auth.HttpAccess | None = None,
) -> MCPServer[Any]:
    """The MCP server over `service`; `tenant_of` says whose backtests a request sees.

    With `access` (HTTP), its tokens switch on the SDK's bearer middleware (401 before any
    tool runs) and the tenant comes from the verified token instead.
    """
    tokens = None if access is None else access.tokens
    updates = StatusUpdates()
    service.add_listener(updates.changed)
    mcp: MCPServer[Any] = MCPServer(
        "backtest-sandbox",
        version=__version__,
        instructions=INSTRUCTIONS,
        token_verifier=tokens,
        auth=None if access is None else access.auth_settings(),
        subscriptions=updates,
    )
    if access is not None:
        tenant_of = access.tenant_of
    heavy = HeavyReads()
    _add_job_tools(mcp, service, tenant_of, heavy)
    _add_sweep_tools(mcp, service, tenant_of, heavy)
    _add_result_tools(mcp, service, tenant_of, heavy)
    _add_backtest_resources(mcp, service, tenant_of, heavy)
    _add_config_resources(mcp, service.settings)
    return mcp


def _add_job_tools(
    mcp: MCPServer[Any], service: BacktestService, tenant_of: TenantResolver, heavy: HeavyReads
) -> None:
    """Submit, status, list, cancel, delete, stats."""

    @mcp.tool(annotations=SUBMITS)
    @answers(views.StatusResponse)
    async def run_backtest(
        code_content: Annotated[str, Field(description="The strategy's Python source.")],
        config: ConfigArg,
        ctx: Context[Any, Any],
        language: LanguageArg = "python",
        wait: Annotated[
            bool,
            Field(description="true: return only once the backtest has finished."),
        ] = False,
    ) -> views.StatusResponse:
        """Submit a Backtrader strategy for a backtest. Returns its status: queued, or
        completed at once (cached: true) when an identical run was done before. With wait=true
        it returns once finished, and reports progress if the request has a progress token."""
        tenant = tenant_of(ctx)
        submitted = await _call(service.submit, tenant, code_content, language, config)
        if wait:
            await _wait(service, tenant, submitted.backtest_id, ctx)
        return await _call(service.status, tenant, submitted.backtest_id)

    @mcp.tool(annotations=READ_ONLY)
    @answers(views.StatusResponse)
    async def get_backtest_status(
        backtest_id: BacktestId, ctx: Context[Any, Any], full: Full = False
    ) -> views.StatusResponse:
        """Status, progress_percent and estimated_completion of a backtest; once completed, a
        summary of its result an agent can read every time (every metric, the last trades,
        the equity curve cut to 100 points; full=true for all of it), or its error."""
        tenant = tenant_of(ctx)
        if not full:
            return await _call(service.status, tenant, backtest_id)
        return await heavy.call(tenant, service.status, tenant, backtest_id, full=True)

    @mcp.tool(annotations=READ_ONLY)
    @answers(views.ListResponse)
    async def list_backtests(
        ctx: Context[Any, Any],
        status: StatusArg = None,
        limit: Annotated[Any, _integer("Page size, 1 to 200.", 50)] = 50,
        cursor: Annotated[
            str | None, Field(description="next_cursor of the previous page.")
        ] = None,
    ) -> views.ListResponse:
        """Your backtests and sweeps (kind: "sweep"), newest first, a page at a time."""
        return await _call(
            service.list_backtests, tenant_of(ctx), status=status, limit=limit, cursor=cursor
        )

    @mcp.tool(annotations=CANCELS)
    @answers(views.CancelResponse)
    async def cancel_backtest(
        backtest_id: BacktestId, ctx: Context[Any, Any]
    ) -> views.CancelResponse:
        """Cancel a queued or running backtest or sweep; a running container is killed at once."""
        return await _call(service.cancel, tenant_of(ctx), backtest_id)

    @mcp.tool(annotations=CANCELS)
    @answers(views.DeleteResponse)
    async def delete_backtest(
        backtest_id: BacktestId, ctx: Context[Any, Any]
    ) -> views.DeleteResponse:
        """Delete a backtest or a sweep and its results (a running one is cancelled first)."""
        return await _call(service.delete, tenant_of(ctx), backtest_id)

    @mcp.tool(annotations=READ_ONLY)
    @answers(views.QueueStats)
    async def get_queue_stats(ctx: Context[Any, Any]) -> views.QueueStats:
        """Your backtests by status, cache hits and average times; the server's worker slots."""
        return await _call(service.stats, tenant_of(ctx))

    @mcp.tool(annotations=READ_ONLY)
    @answers(Catalog)
    async def list_data(ctx: Context[Any, Any]) -> Catalog:
        """The market data this server has: each symbol and timeframe with its first and last
        bar and how many; and whether an unknown symbol falls back to synthetic bars."""
        return await _call(service.catalog)


SweepId = Annotated[str, Field(description="The sweep_id run_sweep returned.")]
GridArg = Annotated[
    Any,
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {"type": "array", "minItems": 1},
            "description": "{param: [values]}: every combination of the values runs once, "
            "with the config's params as the base.",
        }
    ),
]


def _add_sweep_tools(
    mcp: MCPServer[Any], service: BacktestService, tenant_of: TenantResolver, heavy: HeavyReads
) -> None:
    """Parameter sweeps (docs/interface.md section 9)."""

    @mcp.tool(annotations=SUBMITS)
    @answers(SweepSubmitResponse)
    async def run_sweep(
        code_content: Annotated[str, Field(description="The strategy's Python source.")],
        config: ConfigArg,
        grid: GridArg,
        ctx: Context[Any, Any],
        language: LanguageArg = "python",
        target: Annotated[
            str, Field(description="The metric to rank by (a metric name).")
        ] = "sharpe_ratio",
        direction: Annotated[
            Literal["max", "min"], Field(description="max: higher is better.")
        ] = "max",
        constraints: Annotated[
            list[str],
            Field(description="Each 'METRIC OP NUMBER', OP one of < <= > >=, e.g. "
            "'max_drawdown_pct <= 25'; combinations failing one rank last."),
        ] = [],  # noqa: B006  (the SDK copies defaults; it is never mutated)
        oos_start: Annotated[
            str | None,
            Field(description="ISO date: tune on [start_date, oos_start), then run the best "
            "combination once on [oos_start, end_date]."),
        ] = None,
    ) -> SweepSubmitResponse:
        """Run a strategy over a grid of parameters, one backtest per combination (each in its
        own sandbox, cached like run_backtest), and rank them by target. Poll
        get_sweep_status for progress, the ranking, the best combination and, with oos_start,
        its out-of-sample result."""
        return await _call(
            service.submit_sweep,
            tenant_of(ctx),
            code_content,
            language,
            config,
            grid=grid,
            target=target,
            direction=direction,
            constraints=constraints,
            oos_start=oos_start,
        )

    @mcp.tool(annotations=READ_ONLY)
    @answers(SweepStatus)
    async def get_sweep_status(
        sweep_id: SweepId,
        ctx: Context[Any, Any],
        top: Annotated[Any, _integer("How many ranked combinations to return.", 20)] = 20,
    ) -> CallToolResult:
        """A sweep's progress (combinations done of total) and its ranking, best first
        (combinations failing a constraint last), the best combination, its out-of-sample
        result and deflated Sharpe ratio; with two varying parameters a completed sweep also
        returns a heatmap of the target as a PNG image."""
        tenant = tenant_of(ctx)
        async with heavy.slot(tenant):
            answer, heatmap = await _call(service.sweep_status, tenant, sweep_id, top=top)
            png = None if heatmap is None else await _call(render_heatmap, heatmap)
        data = answer.model_dump(mode="json")
        content: list[Any] = [TextContent(text=json.dumps(data))]
        if png is not None:
            content.append(Image(data=png, format="png").to_image_content())
        return CallToolResult(content=content, structured_content=data)


def _add_result_tools(
    mcp: MCPServer[Any], service: BacktestService, tenant_of: TenantResolver, heavy: HeavyReads
) -> None:
    """Read a result, its trades, its charts."""

    @mcp.tool(annotations=READ_ONLY)
    @answers(views.ResultView)
    async def read_backtest(
        backtest_id: BacktestId,
        ctx: Context[Any, Any],
        chart: Annotated[
            str | None,
            WithJsonSchema(
                {"anyOf": [_chart_schema("Include this chart's series."), {"type": "null"}]}
                | {"default": None}
            ),
        ] = None,
        full: Full = False,
    ) -> views.ResultView:
        """The result of a completed backtest: metrics, the equity curve (cut to 100 points
        unless full=true), the last trades (page them all with read_backtest_orders), logs,
        data and provenance. A backtest without a result yet is an error naming its status."""
        tenant = tenant_of(ctx)
        if not full:
            return await _call(service.read, tenant, backtest_id, chart=chart)
        return await heavy.call(tenant, service.read, tenant, backtest_id, chart=chart, full=True)

    @mcp.tool(annotations=READ_ONLY)
    @answers(views.OrdersResponse)
    async def read_backtest_orders(
        backtest_id: BacktestId,
        ctx: Context[Any, Any],
        start: Annotated[Any, _integer("Index of the first entry.", 0)] = 0,
        end: Annotated[
            Any, _integer("Index after the last entry (at most start + 500).", 100)
        ] = 100,
        kind: Annotated[
            Any,
            WithJsonSchema(
                {
                    "type": "string",
                    "enum": ["trades", "orders"],
                    "default": "trades",
                    "description": "trades: the closed trades; orders: every order's life",
                }
            ),
        ] = "trades",
    ) -> views.OrdersResponse:
        """A page of a completed backtest's trade log (kind=trades, the default: one entry
        per closed trade, in closing order) or order log (kind=orders: one entry per order, in
        creation order, with its status events from Submitted to Completed, Canceled, Expired
        or Margin (not enough cash), and why it ended unfilled). Every page also carries the
        positions still open after the last bar, with their unrealised pnl."""
        return await _call(
            service.orders, tenant_of(ctx), backtest_id, start=start, end=end, kind=kind
        )

    @mcp.tool(annotations=READ_ONLY)
    @answers(views.ChartSeries)
    async def read_backtest_chart(
        backtest_id: BacktestId,
        name: Annotated[str, WithJsonSchema(_chart_schema("Which curve to draw."))],
        ctx: Context[Any, Any],
        full: Full = False,
    ) -> CallToolResult:
        """The equity or drawdown curve of a completed backtest: the series as JSON
        (downsampled unless full=true) and the chart as a PNG image."""
        tenant = tenant_of(ctx)
        async with heavy.slot(tenant):
            series, _ = await _call(service.chart, tenant, backtest_id, name, full=full)
            png = await _call(service.chart_png, tenant, backtest_id, name, render_chart)
        data = series.model_dump(mode="json")
        return CallToolResult(
            content=[
                TextContent(text=json.dumps(data)),
                Image(data=png, format="png").to_image_content(),
            ],
            structured_content=data,
        )


class HeavyReads:
    """Reads whose cost grows with a result (whole results, CSVs, a chart's first drawing)
    run at most HEAVY_READS_PER_TENANT at a time per tenant, off the event loop: one
    tenant's burst queues behind itself and cannot take every core from the others."""

    def __init__(self) -> None:
        self._slots: dict[str, anyio.Semaphore] = {}

    def slot(self, tenant: str) -> anyio.Semaphore:
        return self._slots.setdefault(tenant, anyio.Semaphore(HEAVY_READS_PER_TENANT))

    async def call(
        self, tenant: str, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """`_call`, in one of the tenant's slots."""
        async with self.slot(tenant):
            return await _call(fn, *args, **kwargs)


def _add_backtest_resources(
    mcp: MCPServer[Any], service: BacktestService, tenant_of: TenantResolver, heavy: HeavyReads
) -> None:
    """A backtest's status and its series as resources (docs/interface.md section 12)."""

    @mcp.resource(
        "backtest://{backtest_id}",
        name="backtest-status",
        title="A backtest's status (as get_backtest_status answers)",
        mime_type="application/json",
    )
    async def backtest_status(backtest_id: str, ctx: Context[Any, Any]) -> str:
        status = await _resource(_call(service.status, tenant_of(ctx), backtest_id))
        return status.model_dump_json()

    @mcp.resource(
        "backtest://{backtest_id}/trades.csv",
        name="backtest-trades",
        title="Every closed trade of a completed backtest, as CSV",
        mime_type="text/csv",
    )
    async def backtest_trades(backtest_id: str, ctx: Context[Any, Any]) -> str:
        tenant = tenant_of(ctx)
        return await _resource(heavy.call(tenant, service.trades_csv, tenant, backtest_id))

    @mcp.resource(
        "backtest://{backtest_id}/equity.csv",
        name="backtest-equity",
        title="The whole equity curve of a completed backtest, as CSV",
        mime_type="text/csv",
    )
    async def backtest_equity(backtest_id: str, ctx: Context[Any, Any]) -> str:
        tenant = tenant_of(ctx)
        return await _resource(heavy.call(tenant, service.equity_csv, tenant, backtest_id))

    @mcp.resource(
        "backtest://{backtest_id}/chart/{name}.png",
        name="backtest-chart",
        title="The equity or drawdown chart of a completed backtest",
        mime_type="image/png",
    )
    async def backtest_chart(backtest_id: str, name: str, ctx: Context[Any, Any]) -> bytes:
        tenant = tenant_of(ctx)
        drawing = heavy.call(tenant, service.chart_png, tenant, backtest_id, name, render_chart)
        return await _resource(drawing)

    @mcp.resource(
        "data://catalog",
        name="data-catalog",
        title="The market data this server has (as list_data answers)",
        mime_type="application/json",
    )
    async def data_catalog() -> str:
        catalog = await _resource(_call(service.catalog))
        return catalog.model_dump_json()


class StatusUpdates(InMemorySubscriptionBus):
    """Delivers `backtest://{backtest_id}` updates to clients subscribed to that URI.

    Status changes happen on worker threads; a listen stream lives on the event loop. The
    loop is the one the first subscriber listened from (with no subscriber there is nobody
    to tell). A subscription names one URI, and ids are unguessable: a tenant hears only of
    backtests whose id it was given.
    """

    def __init__(self) -> None:
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        self._loop = asyncio.get_running_loop()
        return super().subscribe(listener)

    def changed(self, backtest_id: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        event = ResourceUpdated(uri=f"backtest://{backtest_id}")
        loop.call_soon_threadsafe(self._publish, event)

    def _publish(self, event: ServerEvent) -> None:
        task = asyncio.get_running_loop().create_task(self.publish(event))
        self._pending.add(task)  # a task nobody holds may be collected before it runs
        task.add_done_callback(self._pending.discard)


async def _resource(answer: Awaitable[R]) -> R:
    """A service call answering a resource read: a refusal is a `ResourceError` with the
    same message."""
    try:
        return await answer
    except Refused as e:
        raise ResourceError(str(e)) from e


def _add_config_resources(mcp: MCPServer[Any], settings: Settings) -> None:
    """The same config document under both URIs of the contract."""
    config_text = json.dumps(config_document(settings), indent=2)

    def config_resource() -> str:
        """The config's JSON schema, rules, timeframes, error types and this server's limits."""
        return config_text

    for uri in CONFIG_URIS:
        mcp.resource(
            uri,
            name="backtest-config",
            title="Backtest config: schema, rules, timeframes, error types, limits",
            mime_type="application/json",
        )(config_resource)


async def _run_stdio(server: MCPServer[Any], service: BacktestService) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_close_on_sigterm, service)
        await server.run_stdio_async()
        tasks.cancel_scope.cancel()


async def _close_on_sigterm(service: BacktestService) -> None:
    """On SIGTERM, close the service (kill containers, re-queue their jobs), then die of it.

    Unwinding normally would wait for the thread blocked reading stdin, which only returns
    when the client writes or closes it: a terminated server would hang until killed.
    """
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            await anyio.to_thread.run_sync(service.close)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


def configure_logging() -> None:
    """Log lines, the audit trail among them, to stderr: stdout is the stdio transport's."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)


def serve(
    settings: Settings,
    transport: Literal["stdio", "http", "streamable-http"] = "stdio",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    insecure_no_auth: bool = False,
) -> None:
    """Run the MCP server until stdin closes (stdio) or a signal stops it (HTTP).

    HTTP requires a bearer token per request (`BACKTEST_API_TOKENS`) and refuses to start
    without one, unless `insecure_no_auth` on a loopback address. Jobs left by an earlier
    process are accounted for first; on the way out, running containers are killed and their
    jobs go back to the queue for the next start.

    Raises:
        ValueError: an unknown transport.
        InvalidRequest: HTTP without tokens, malformed tokens, or a misused opt-out; nothing
            was started.
        sqlite3.Error | psycopg.Error: the job store cannot be opened.
    """
    if transport not in ("stdio", "http", "streamable-http"):
        raise ValueError(f"transport: must be stdio or http, not {transport!r}")
    configure_logging()
    access = None
    if transport != "stdio":
        access = http_auth.http_access(
            settings, host=host, port=port, insecure_no_auth=insecure_no_auth
        )
    service = BacktestService(settings, Engine(settings))
    stopped_by = None
    with service:
        server = build_server(service, access=access)
        if access is None:
            anyio.run(_run_stdio, server, service)
        else:
            stopped_by = _run_http(server, access, host=host, port=port, settings=settings)
    if stopped_by is not None:
        # The service is closed: now die of the signal, as the caller expects.
        signal.signal(stopped_by, signal.SIG_DFL)
        os.kill(os.getpid(), stopped_by)


def _run_http(
    server: MCPServer[Any],
    access: http_auth.HttpAccess,
    *,
    host: str,
    port: int,
    settings: Settings,
) -> int | None:
    """Serve streamable HTTP until SIGTERM or SIGINT; return the signal that stopped it.

    uvicorn re-raises the signal it stopped on once it is done, which would kill the process
    before the service is closed: running containers left behind, their jobs not re-queued.
    Our own handler is what it restores and re-raises to, so the caller closes the service
    first. The handler also stops uvicorn when a signal comes before uvicorn's is installed.
    """
    import uvicorn  # the SDK's own HTTP server; only `serve --transport http` needs it

    # Room for the largest accepted strategy JSON-escaped, so that an oversized one gets the
    # tool's clear error rather than a bare HTTP 413.
    body_limit = max(DEFAULT_MAX_REQUEST_BODY_SIZE, 8 * settings.max_code_bytes)
    app = server.streamable_http_app(
        max_request_body_size=body_limit, transport_security=access.security, host=host
    )
    web = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            limit_concurrency=settings.http_max_connections,
            timeout_keep_alive=5,
        )
    )
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        web.should_exit = True

    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, on_signal) for sig in stop_signals}
    try:
        anyio.run(web.serve)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else None
