"""The backtest service: submit, status, list, read, cancel, delete. Shared by every front end.

It validates what callers send (naming the field and the rule), answers from the job store,
and hands queued work to the scheduler. Every call takes the caller's `tenant`: a job of
another tenant is answered exactly like one that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from backtest_sandbox.data import catalog
from backtest_sandbox.domain.code import (
    Language,
    check_code,
    check_language,
    check_syntax,
    is_backtest_id,
    new_backtest_id,
    unsupported_language,
)
from backtest_sandbox.domain.config import BacktestConfig, parse_config
from backtest_sandbox.domain.errors import (
    BacktestSandboxError,
    ErrorType,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
)
from backtest_sandbox.domain.models import BacktestResult, JobStatus, RunError
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.domain.sweep import parse_sweep

from . import audit, sweeps, views
from .engine import RunRequest
from .results import open_results
from .scheduler import Dispatcher, EngineLike, Scheduler
from .store import Job, JobStore, JobSummary, Limits, NewJob, Recovery, StoredResult, open_store
from .sweeps import SweepStatus, SweepSubmitResponse

logger = logging.getLogger(__name__)

MAX_LIST_LIMIT = 200
MAX_ATTEMPTS = 2  # a job interrupted by a dying server runs once more, then fails
MAINTENANCE_SECONDS = 600.0  # how often retention and clean-up run
# Temporal backend: a run queued this long may belong to a server that died between writing
# its row and starting its workflow; upkeep starts it again (a second start is a no-op).
REDISPATCH_AFTER_SECONDS = 60.0
_CURSOR_PREFIX = "v2:"


def _new_job(
    tenant: str, config: BacktestConfig, code: str, language: str, **fields: Any
) -> NewJob:
    """A new row for `config` under a fresh id; `fields` set the rest (kind, parent, ...)."""
    return NewJob(
        id=new_backtest_id(),
        tenant=tenant,
        language=language,
        code=code,
        config_json=config.canonical_json(),
        symbol=config.symbol,
        timeframe=config.timeframe.name,
        **fields,
    )


def check_int(value: Any, field: str) -> int:
    """Raises:
    InvalidRequest: not an integer (a bool is not one either).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(field, "must be an integer")
    return value


def _encode_cursor(last: JobSummary) -> str:
    """The page's last backtest, by its id: a random name the tenant already holds, so the
    cursor says nothing of how many backtests anyone else has submitted."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last.id}".encode()).decode()


def _decode_cursor(cursor: str) -> str:
    """The backtest id a cursor names.

    Raises:
        InvalidRequest: not a cursor this server handed out.
    """
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (ValueError, UnicodeError, binascii.Error):
        text = ""
    backtest_id = text.removeprefix(_CURSOR_PREFIX)
    if not text.startswith(_CURSOR_PREFIX) or not is_backtest_id(backtest_id):
        raise InvalidRequest("cursor", "is not a next_cursor returned by list_backtests")
    return backtest_id


class BacktestService:
    """The job service over one store, one scheduler and one engine. Thread-safe."""

    def __init__(self, settings: Settings, engine: EngineLike, store: JobStore | None = None):
        """Open the settings' job store (`open_store`); nothing runs before `start`.

        Raises:
            sqlite3.Error | psycopg.Error: the store cannot be opened.
        """
        self.settings = settings
        self._engine = engine
        self._listeners: list[Callable[[str], None]] = []
        self._store = store or open_store(settings)
        self._results = open_results(settings)
        self._limits = Limits(
            max_queued=settings.tenant_max_queued,
            max_queued_combinations=settings.tenant_max_queued_combinations,
            max_stored_jobs=settings.tenant_max_stored_jobs,
            max_stored_bytes=settings.tenant_max_stored_bytes,
        )
        self._scheduler: Dispatcher = self._dispatcher(settings) or Scheduler(
            self._store,
            engine,
            self._results,
            workers=settings.max_workers,
            tenant_max_running=settings.effective_tenant_max_running,
            cache_max_entries=settings.cache_max_entries,
            on_change=self._changed,
        )
        self._maintenance = _Every(MAINTENANCE_SECONDS, self._upkeep)
        self._sweeps = sweeps.SweepCoordinator(
            self._store,
            self._results,
            new_child=self._child_job,
            dispatch=self._scheduler.submitted,
            changed=self._changed,
            # Runs end in the workers' processes: follow the store's changes instead.
            follow_store=settings.backend == "temporal",
        )
        self._catalog_known: dict[str, catalog.Dataset | None] = {}
        self._catalog_lock = threading.Lock()

    @staticmethod
    def _dispatcher(settings: Settings) -> Dispatcher | None:
        """Temporal's workers when the settings name that backend (None: the local threads)."""
        if settings.backend != "temporal":
            return None
        # Imported here: temporalio is loaded only by those who use it.
        from .temporal.dispatch import TemporalDispatcher

        return TemporalDispatcher(settings)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> Recovery:
        """Account for what a previous process left, then start the workers.

        Containers of a dead process are removed first (an unreachable daemon is logged: its
        jobs will fail with sandbox_error). Jobs found running were interrupted: each runs
        once more, and fails with sandbox_error if it is interrupted again.

        With the temporal backend, this server owns neither containers nor running jobs (the
        workers do, and Temporal retries their runs): there is nothing to recover here.
        """
        if self.settings.backend == "temporal":
            self.maintain()
            self._scheduler.start()
            self.redispatch(queued_for=0.0)  # a crashed server's runs wait no longer
            self._sweeps.start()  # every server follows every running sweep
            self._maintenance.start()
            return Recovery(requeued=0, failed=0, queued=0)
        try:
            removed = self._engine.remove_orphans()
        except BacktestSandboxError as e:
            logger.warning("could not look for orphaned containers: %s", e)
        else:
            if removed:
                logger.info("removed %d container(s) left by a previous process", removed)
        self._engine.warm_up()
        give_up = RunError(
            type=ErrorType.SANDBOX_ERROR,
            message="the server stopped twice while this backtest ran; it was not retried again",
            details={"attempts": MAX_ATTEMPTS},
        )
        recovery = self._store.recover(
            max_attempts=MAX_ATTEMPTS, give_up_error_json=give_up.model_dump_json()
        )
        if recovery.requeued or recovery.failed:
            logger.info(
                "recovered: %d interrupted job(s) queued again, %d failed after two interruptions",
                recovery.requeued,
                recovery.failed,
            )
        self.maintain()
        self._scheduler.start()
        self._sweeps.start()
        self._maintenance.start()
        return recovery

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(backtest_id)` whenever a backtest's status changes (from any
        thread; it must not block)."""
        self._listeners.append(listener)

    def _changed(self, backtest_id: str) -> None:
        self._sweeps.job_changed(backtest_id)
        for listener in self._listeners:
            try:
                listener(backtest_id)
            except Exception:  # a listener's fault must not fail the job's own bookkeeping
                logger.exception("a status listener failed")

    def _upkeep(self) -> None:
        self.maintain()
        self.redispatch()

    def maintain(self) -> None:
        """Storage upkeep, at start and every MAINTENANCE_SECONDS: results of a version 1
        store move to files, jobs past the retention period go, and result files a crash
        left unreferenced are removed."""
        while legacy := self._store.legacy_results():
            for job_id, result_json in legacy:
                result = BacktestResult.model_validate_json(result_json)
                self._store.adopt_legacy(job_id, StoredResult(*self._results.write(result)))
        if self.settings.retention_days is not None:
            before = time.time() - self.settings.retention_days * 86400
            while True:
                purged, unreferenced = self._store.purge(before)
                for digest in unreferenced:
                    self._results.remove(digest)
                if not purged:
                    break
        self._results.remove_strays(self._store.result_digests())

    def redispatch(self, queued_for: float = REDISPATCH_AFTER_SECONDS) -> int:
        """Temporal backend: start again the workflow of every run queued for `queued_for`
        seconds or more; the count handed over. A server writes a run's row, then starts its
        workflow: one that dies in between leaves a row no worker will ever see. Starting a
        workflow that exists, or existed, does nothing, so every row is simply started again.
        """
        if self.settings.backend != "temporal":
            return 0
        started = 0
        for job in self._store.queued_runs(created_before=time.time() - queued_for):
            try:
                self._scheduler.submitted(job.queued_again())
            except BacktestSandboxError as e:  # Temporal unreachable: the next upkeep retries
                logger.warning("could not start the workflow of queued %s again: %s", job.id, e)
                break
            started += 1
        return started

    def close(self) -> None:
        """Stop the workers (their jobs go back to the queue), then the engine and the store."""
        self._maintenance.stop()
        self._sweeps.stop()
        self._scheduler.stop()
        self._engine.close()
        self._results.close()
        self._store.close()

    def __enter__(self) -> BacktestService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- submit ------------------------------------------------------------------------------

    def submit(
        self, tenant: str, code_content: Any, language: Any = "python", config: Any = None
    ) -> views.SubmitResponse:
        """Queue a backtest, or answer at once from the cache or for an unrunnable language.

        Every submission, refused ones included, leaves one audit line.

        Raises:
            InvalidRequest: the code, the language or the config breaks a rule; nothing queued.
            QuotaExceeded: the tenant has `tenant_max_queued` jobs queued; nothing queued.
        """
        code_hash = audit.code_sha256(code_content)
        try:
            response = self._submit(tenant, code_content, language, config)
        except InvalidRequest as e:
            audit.record("submit", tenant, None, code_hash, status="rejected", field=e.field)
            raise
        except QuotaExceeded as e:
            audit.record("submit", tenant, None, code_hash, status="rejected", rule=e.rule)
            raise
        audit.record(
            "submit",
            tenant,
            response.backtest_id,
            code_hash,
            status=response.status.value,
            cached=response.cached,
            error_type=None if response.error is None else response.error.type.value,
        )
        return response

    def _submit(
        self, tenant: str, code_content: Any, language: Any, config: Any
    ) -> views.SubmitResponse:
        code, lang, parsed = self._checked(code_content, language, config)
        job = _new_job(tenant, parsed, code, lang)
        # Cheapest first, and no data work before them: the language and the compile. A
        # refusal is recorded (it counts against the stored-jobs quota) but never queued.
        error = unsupported_language(lang) or check_syntax(code)
        if error is not None:
            failed = replace(job, status=JobStatus.FAILED, error_json=error.model_dump_json())
            self._store.insert(failed, self._limits)
            return views.SubmitResponse(
                backtest_id=job.id, status=JobStatus.FAILED, cached=False, error=error
            )
        request = RunRequest(
            backtest_id=job.id, code=code, config=parsed, language=lang, tenant=tenant
        )
        job = replace(job, cache_key=self._cache_key(request))  # names the data, reads none
        hit = self._from_cache(job)
        if hit is not None:
            return hit
        self._store.insert(job, self._limits)
        self._dispatch(job)
        return views.SubmitResponse(backtest_id=job.id, status=JobStatus.QUEUED, cached=False)

    def _dispatch(self, job: NewJob) -> None:
        """Hand a queued job to whatever runs jobs.

        Raises:
            SandboxError: it could not be handed over (Temporal unreachable); the job is
                deleted again, so that nothing waits for ever for a run that never starts.
        """
        try:
            self._scheduler.submitted(job)
        except BacktestSandboxError:
            self._store.delete(job.tenant, job.id)
            raise

    def _checked(
        self, code_content: Any, language: Any, config: Any
    ) -> tuple[str, Language, BacktestConfig]:
        """The code, the language and the config of a submission, each against its rules.

        Raises:
            InvalidRequest: naming the first argument that breaks a rule.
        """
        code = check_code(code_content, self.settings.max_code_bytes)
        lang = check_language(language)
        parsed = parse_config(
            config,
            max_timeout_seconds=self.settings.max_timeout_seconds,
            max_memory_mb=self.settings.max_memory_mb,
        )
        return code, lang, parsed

    def _cache_key(self, request: RunRequest) -> str | None:
        try:
            return self._engine.cache_key(request)
        except BacktestSandboxError as e:
            # No key only means no caching; the run itself will meet and report the fault.
            logger.warning("no cache key for %s: %s", request.backtest_id, e)
            return None

    def _from_cache(self, job: NewJob) -> views.SubmitResponse | None:
        """A terminal job that refers to the cached outcome of an identical earlier run (its
        stored result is shared, not copied), if there is one. Quotas apply as to any job.

        Raises:
            QuotaExceeded: the tenant keeps as many jobs or bytes as it may.
        """
        hit = self._cached(job)
        if hit is None:
            return None
        self._store.insert(hit, self._limits)
        error = None if hit.error_json is None else RunError.model_validate_json(hit.error_json)
        return views.SubmitResponse(backtest_id=job.id, status=hit.status, cached=True, error=error)

    def _cached(self, job: NewJob) -> NewJob | None:
        """`job` as a terminal row referring to the cached outcome of an identical earlier run,
        or None when there is none."""
        entry = None if job.cache_key is None else self._store.cache_get(job.cache_key)
        if entry is None:
            return None
        try:
            if entry.error_json is not None:
                RunError.model_validate_json(entry.error_json)
        except ValidationError:
            # Written by a server whose error schema differed: run it again instead.
            logger.warning("ignoring a cache entry that no longer validates")
            return None
        return replace(
            job,
            status=entry.status,
            cached=True,
            result_digest=entry.result_digest,
            error_json=entry.error_json,
        )

    # -- sweeps ------------------------------------------------------------------------------

    def submit_sweep(
        self,
        tenant: str,
        code_content: Any,
        language: Any = "python",
        config: Any = None,
        *,
        grid: Any = None,
        target: Any = "sharpe_ratio",
        direction: Any = "max",
        constraints: Any = (),
        oos_start: Any = None,
    ) -> SweepSubmitResponse:
        """Queue a sweep: one run per combination of `grid` over `config` (docs/interface.md
        section 9); combinations already run are answered from the cache at once.

        Raises:
            InvalidRequest: an argument breaks a rule; nothing queued.
            QuotaExceeded: the tenant's combination or storage quota is full; nothing queued.
        """
        code_hash = audit.code_sha256(code_content)
        try:
            response = self._submit_sweep(
                tenant,
                code_content,
                language,
                config,
                grid,
                target,
                direction,
                constraints,
                oos_start,
            )
        except (InvalidRequest, QuotaExceeded) as e:
            detail = {"field": e.field} if isinstance(e, InvalidRequest) else {"rule": e.rule}
            audit.record("sweep", tenant, None, code_hash, status="rejected", **detail)
            raise
        audit.record(
            "sweep",
            tenant,
            response.sweep_id,
            code_hash,
            status=response.status.value,
            combinations=response.combinations,
            cached=response.cached,
        )
        return response

    def _submit_sweep(
        self,
        tenant: str,
        code_content: Any,
        language: Any,
        config: Any,
        grid: Any,
        target: Any,
        direction: Any,
        constraints: Any,
        oos_start: Any,
    ) -> SweepSubmitResponse:
        code, lang, base = self._checked(code_content, language, config)
        spec = parse_sweep(
            base=base,
            grid=grid,
            target=target,
            direction=direction,
            constraints=constraints,
            oos_start=oos_start,
            max_combinations=self.settings.max_sweep_combinations,
        )
        combinations = spec.combinations()
        sweep = _new_job(
            tenant,
            base,
            code,
            lang,
            kind="sweep",
            status=JobStatus.RUNNING,
            summary_json=sweeps.new_state(spec, len(combinations)),
        )
        error = unsupported_language(lang) or check_syntax(code)
        if error is not None:  # every combination would fail alike: none is queued
            failed = replace(sweep, status=JobStatus.FAILED, error_json=error.model_dump_json())
            self._store.insert(failed, self._limits)
            return SweepSubmitResponse(
                sweep_id=sweep.id, status=JobStatus.FAILED, combinations=len(combinations), cached=0
            )
        children = [
            self._child_job(tenant, sweep.id, spec.tuning_config(base, params), code, lang)
            for params in combinations
        ]
        self._store.insert_sweep(sweep, children, self._limits)
        try:
            for child in children:
                if child.status is JobStatus.QUEUED:  # a workflow each with Temporal
                    self._scheduler.submitted(child)
        except BacktestSandboxError:  # Temporal unreachable: the sweep goes, as a run would
            self._store.cancel(tenant, sweep.id)
            self._cancel_running(self.summary(tenant, sweep.id))
            self._store.delete(tenant, sweep.id)
            raise
        self._sweeps.job_changed(sweep.id)
        return SweepSubmitResponse(
            sweep_id=sweep.id,
            status=JobStatus.RUNNING,
            combinations=len(combinations),
            cached=sum(child.cached for child in children),
        )

    def _child_job(
        self, tenant: str, parent: str, config: BacktestConfig, code: str, language: str
    ) -> NewJob:
        """One run of a sweep as a store row: queued, or answered from the cache."""
        job = _new_job(tenant, config, code, language, parent=parent)
        request = RunRequest(
            backtest_id=job.id,
            code=code,
            config=config,
            language=check_language(language),
            tenant=tenant,
        )
        job = replace(job, cache_key=self._cache_key(request))
        return self._cached(job) or job

    def sweep_status(
        self, tenant: str, sweep_id: Any, *, top: Any = sweeps.DEFAULT_TOP
    ) -> tuple[SweepStatus, sweeps.Heatmap | None]:
        """A sweep's progress and ranking (the top `top`), with its heatmap when it has one.

        Raises:
            NotFound: no such sweep for this tenant (a backtest's id included).
            InvalidRequest: `top` is not an integer from 1 to the sweep limit.
        """
        top = check_int(top, "top")
        if not 1 <= top <= self.settings.max_sweep_combinations:
            raise InvalidRequest("top", f"must be from 1 to {self.settings.max_sweep_combinations}")
        job = self.summary(tenant, sweep_id)
        if job.kind != "sweep":
            raise InvalidRequest(
                "sweep_id", "names a backtest, not a sweep: get_backtest_status reads it"
            )
        return self._sweeps.status(job.id, job, top)

    # -- reads -------------------------------------------------------------------------------

    def _job(self, tenant: str, backtest_id: Any) -> Job:
        """Raises:
        NotFound: no such job for this tenant (another tenant's job included).
        """
        if not is_backtest_id(backtest_id):
            raise NotFound(str(backtest_id)[:80])
        job = self._store.get(tenant, backtest_id)
        if job is None:
            raise NotFound(backtest_id)
        return job

    def summary(self, tenant: str, backtest_id: Any) -> JobSummary:
        """The job's status and progress without its code or result: cheap enough to poll.

        Raises:
            NotFound: no such job for this tenant.
        """
        if not is_backtest_id(backtest_id):
            raise NotFound(str(backtest_id)[:80])
        job = self._store.get_summary(tenant, backtest_id)
        if job is None:
            raise NotFound(backtest_id)
        return job

    def wait(
        self,
        tenant: str,
        backtest_id: Any,
        until: Callable[[JobSummary], bool],
        timeout: float,
    ) -> JobSummary:
        """The job's summary once `until` holds for it, or when `timeout` passes: woken by the
        store's writes, not by polling.

        Raises:
            NotFound: no such job for this tenant.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = self._store.version()
            job = self.summary(tenant, backtest_id)
            remaining = deadline - time.monotonic()
            if until(job) or remaining <= 0:
                return job
            self._store.wait_for_change(seen, remaining)

    def status(self, tenant: str, backtest_id: Any, *, full: bool = False) -> views.StatusResponse:
        """Status, progress, and the result (cut down unless `full`) or the error.

        Raises:
            NotFound: no such job for this tenant.
        """
        job = self._job(tenant, backtest_id)
        return views.status_view(job, self._result_view(job, full=full))

    def list_backtests(
        self,
        tenant: str,
        *,
        status: str | None = None,
        limit: Any = 50,
        cursor: str | None = None,
    ) -> views.ListResponse:
        """The tenant's backtests, newest first, a page at a time.

        Raises:
            InvalidRequest: an unknown status, a limit out of range, or a foreign cursor.
        """
        wanted = None
        if status is not None:
            try:
                wanted = JobStatus(status)
            except ValueError:
                names = ", ".join(s.value for s in JobStatus)
                raise InvalidRequest("status", f"must be one of {names}") from None
        if not 1 <= check_int(limit, "limit") <= MAX_LIST_LIMIT:
            raise InvalidRequest("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
        before = None
        if cursor is not None:
            last = self._store.get_summary(tenant, _decode_cursor(cursor))
            if last is None:
                raise InvalidRequest(
                    "cursor", "names a backtest that was deleted since; list from the start"
                )
            before = last.seq
        jobs, more = self._store.list_jobs(tenant, status=wanted, limit=limit, before_seq=before)
        return views.ListResponse(
            backtests=[views.summary_view(job) for job in jobs],
            next_cursor=_encode_cursor(jobs[-1]) if more else None,
        )

    def read(
        self,
        tenant: str,
        backtest_id: Any,
        *,
        chart: str | None = None,
        full: bool = False,
    ) -> views.ResultView:
        """The result, with the named chart's series.

        Raises:
            NotFound: no such job for this tenant.
            InvalidRequest: `chart` names no chart, or the job has no result (yet).
        """
        name = None if chart is None else _chart_name(chart)
        job = self._completed(tenant, backtest_id)
        view = self._result_view(job, full=full)
        assert view is not None
        if name is not None:
            view = view.model_copy(update={"chart": self._series(job, name, full=full)})
        return view

    def _result_view(self, job: Job, *, full: bool) -> views.ResultView | None:
        """The job's result as tools show it: the summary stored beside it (a few KiB,
        whatever the result's size), or the whole of it with `full`."""
        if job.result_digest is None:
            return None
        if not full:
            return self._results.summary(job.result_digest, job.id, job.cached)
        return views.result_view(self._whole(job), cached=job.cached, full=True)

    def _whole(self, job: Job) -> BacktestResult:
        """The whole result, if it is small enough to answer in one piece.

        Raises:
            InvalidRequest: it is larger than `max_full_read_bytes`.
        """
        assert job.result_digest is not None
        size = self._results.size(job.result_digest)
        if size > self.settings.max_full_read_bytes:
            raise InvalidRequest(
                "full",
                f"the whole result is {size} bytes, more than the "
                f"{self.settings.max_full_read_bytes} one answer may carry: page the trades with"
                f" read_backtest_orders and read the series from backtest://{job.id}/equity.csv",
            )
        return self._results.result(job.result_digest, job.id)

    def _series(self, job: Job, name: views.ChartName, *, full: bool) -> views.ChartSeries:
        """The series as an answer carries it: whole with `full`, else cut to a summary."""
        assert job.result_digest is not None
        if full:
            return views.chart_series(self._whole(job), name, max_points=None)
        stored = self._results.series(job.result_digest, job.id, name)
        return views.cut_series(stored, views.INLINE_EQUITY_POINTS)

    def _completed(self, tenant: str, backtest_id: Any) -> Job:
        """The tenant's job, which must have a result.

        Raises:
            NotFound: no such job for this tenant.
            InvalidRequest: the job has no result.
        """
        job = self._job(tenant, backtest_id)
        if job.result_digest is None:
            error = views.load_error(job)
            why = f"it is {job.status.value}" + (f" ({error.type.value})" if error else "")
            raise InvalidRequest("backtest_id", f"{job.id} has no result: {why}")
        return job

    def orders(
        self,
        tenant: str,
        backtest_id: Any,
        *,
        start: Any = 0,
        end: Any = 100,
        kind: Any = "trades",
    ) -> views.OrdersResponse:
        """A page of the trade log (`kind` "trades") or of the order log ("orders"): entries
        start <= i < end, read from the stored index; with the positions open at the end.

        Raises:
            NotFound: no such job for this tenant.
            InvalidRequest: a bad range or kind, or the job has no result.
        """
        kind = _orders_kind(kind)
        start, end = check_int(start, "start"), check_int(end, "end")
        if start < 0:
            raise InvalidRequest("start", "must be >= 0")
        if end < start:
            raise InvalidRequest("end", "must be >= start")
        if end - start > views.ORDERS_PAGE_MAX:
            raise InvalidRequest("end", f"a page holds at most {views.ORDERS_PAGE_MAX} orders")
        job = self._completed(tenant, backtest_id)
        assert job.result_digest is not None
        read = self._results.trades if kind == "trades" else self._results.orders
        page, total = read(job.result_digest, start, end)
        stop = start + len(page)
        summary = self._results.summary(job.result_digest, job.id, job.cached)
        return views.OrdersResponse(
            backtest_id=job.id,
            kind=kind,
            orders=page,
            total=total,
            start=start,
            end=stop,
            next_start=stop if stop < total else None,
            open_positions=summary.open_positions,
        )

    def chart(
        self, tenant: str, backtest_id: Any, name: str, *, full: bool = False
    ) -> tuple[views.ChartSeries, views.ChartSeries]:
        """The named series as an answer carries it (`_series`), and the one to draw: the
        stored reduction (`results.SERIES_POINTS` points, what a picture needs).

        Raises:
            NotFound: no such job for this tenant.
            InvalidRequest: `name` names no chart, the job has no result, or `full` asks for
                more than `max_full_read_bytes`.
        """
        chart = _chart_name(name, field="name")
        job = self._completed(tenant, backtest_id)
        assert job.result_digest is not None
        drawn = self._results.series(job.result_digest, job.id, chart)
        return self._series(job, chart, full=full), drawn

    def chart_png(
        self,
        tenant: str,
        backtest_id: Any,
        name: str,
        draw: Callable[[views.ChartSeries], bytes],
    ) -> bytes:
        """The named chart as PNG: drawn by `draw` from the stored reduction the first time,
        kept beside the result after that.

        Raises:
            NotFound: no such job for this tenant.
            InvalidRequest: `name` names no chart, or the job has no result.
        """
        chart = _chart_name(name, field="name")
        job = self._completed(tenant, backtest_id)
        assert job.result_digest is not None
        series = self._results.series(job.result_digest, job.id, chart)
        return self._results.chart_png(job.result_digest, series, draw)

    def trades_csv(self, tenant: str, backtest_id: Any) -> str:
        """Every closed trade as CSV, one row per trade (the columns of the first trade)."""
        job = self._completed(tenant, backtest_id)
        assert job.result_digest is not None
        return self._results.trades_csv(job.result_digest)

    def catalog(self) -> views.Catalog:
        """The market data this server has (`list_data`)."""
        with self._catalog_lock:
            found = catalog.datasets(self.settings.data_dir, self._catalog_known)
        return views.Catalog(
            datasets=[views.Dataset(**vars(dataset)) for dataset in found],
            synthetic_fallback=True,
        )

    def equity_csv(self, tenant: str, backtest_id: Any) -> str:
        """The whole equity curve as CSV."""
        job = self._completed(tenant, backtest_id)
        assert job.result_digest is not None
        return self._results.equity_csv(job.result_digest)

    def stats(self, tenant: str) -> views.QueueStats:
        """The tenant's jobs by status, and the server's worker slots."""
        counts = self._store.counts(tenant)
        by = counts.by_status
        return views.QueueStats(
            queued=by[JobStatus.QUEUED],
            running=by[JobStatus.RUNNING],
            completed=by[JobStatus.COMPLETED],
            failed=by[JobStatus.FAILED],
            cancelled=by[JobStatus.CANCELLED],
            total=sum(by.values()),
            workers=self._scheduler.workers,
            # The tenant's own: how busy the others keep the server is theirs to know.
            workers_busy=by[JobStatus.RUNNING],
            cache_hits=counts.cache_hits,
            avg_execution_seconds=_rounded(counts.avg_execution_seconds),
            avg_queue_wait_seconds=_rounded(counts.avg_wait_seconds),
        )

    # -- changes -----------------------------------------------------------------------------

    def cancel(self, tenant: str, backtest_id: Any) -> views.CancelResponse:
        """Cancel a queued or running job at once (a running container is killed); a finished
        job keeps its status. Leaves an audit line, for an unknown id too.

        Raises:
            NotFound: no such job for this tenant.
        """
        code = self._code_for_audit(tenant, backtest_id)
        try:
            job = self.summary(tenant, backtest_id)
            change = self._store.cancel(tenant, job.id)
            if change is None:  # deleted meanwhile
                raise NotFound(job.id)
        except NotFound:
            audit.record("cancel", tenant, backtest_id, code, status="not_found")
            raise
        before, now = change
        waiting_workflow = before is JobStatus.QUEUED and self.settings.backend == "temporal"
        if before is JobStatus.RUNNING or waiting_workflow:
            self._cancel_running(job)
        audit.record("cancel", tenant, job.id, code, before=before.value, status=now.value)
        if now is not before:
            self._changed(job.id)
        return views.CancelResponse(backtest_id=job.id, status=now)

    def delete(self, tenant: str, backtest_id: Any) -> views.DeleteResponse:
        """Delete a job and its result; a running one is killed first. Leaves an audit line,
        for an unknown id too.

        Raises:
            NotFound: no such job for this tenant.
        """
        code = self._code_for_audit(tenant, backtest_id)
        try:
            job = self.summary(tenant, backtest_id)
            if job.kind == "sweep":  # its running combinations are killed first
                self._store.cancel(tenant, job.id)
                self._cancel_running(job)
            deleted = self._store.delete(tenant, job.id)
            if deleted is None:
                raise NotFound(job.id)
        except NotFound:
            audit.record("delete", tenant, backtest_id, code, status="not_found")
            raise
        before, unreferenced = deleted
        for digest in unreferenced:
            self._results.remove(digest)
        if before is JobStatus.RUNNING and job.kind != "sweep":
            self._scheduler.cancel(job.id)
        audit.record("delete", tenant, job.id, code, before=before.value, status="deleted")
        self._changed(job.id)
        return views.DeleteResponse(backtest_id=job.id, deleted=True)

    def _cancel_running(self, job: JobSummary) -> None:
        """Kill a cancelled job's container; a sweep's, every running combination's."""
        if job.kind != "sweep":
            self._scheduler.cancel(job.id)
            return
        for child_id in self._store.cancel_children(job.id):
            self._scheduler.cancel(child_id)

    def _code_for_audit(self, tenant: str, backtest_id: Any) -> str:
        """The SHA-256 of the tenant's job's code; `-` when there is no such job."""
        if not is_backtest_id(backtest_id):
            return "-"
        code = self._store.code(tenant, backtest_id)
        return "-" if code is None else audit.code_sha256(code)


def _orders_kind(value: Any) -> views.OrdersKind:
    if value == "trades":
        return "trades"
    if value == "orders":
        return "orders"
    raise InvalidRequest("kind", "must be 'trades' or 'orders'")


def _chart_name(value: str, *, field: str = "chart") -> views.ChartName:
    if value == "equity":
        return "equity"
    if value == "drawdown":
        return "drawdown"
    raise InvalidRequest(field, "must be 'equity' or 'drawdown'")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _Every:
    """Calls `action` every `seconds` on a daemon thread until stopped; a failure is logged
    and the next call comes as planned."""

    def __init__(self, seconds: float, action: Callable[[], None]) -> None:
        self._seconds = seconds
        self._action = action
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stopped.wait(self._seconds):
            try:
                self._action()
            except Exception:  # top of a thread: upkeep must not die for good on one fault
                logger.exception("storage upkeep failed; it runs again later")
