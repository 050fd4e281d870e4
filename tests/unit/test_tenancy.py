"""Tenancy without Docker: tokens and their constant-time lookup, the HTTP access decision,
Host/Origin checks, quotas, fair claiming under a running quota, the audit log; and the HTTP
surface in-process (uvicorn on a free port, the official client, a fake engine): 401s, tenants
resolved per request, DNS rebinding checks, and sessions bound to their tenant."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp.client import Client

from backtest_sandbox.api import http_auth as tenancy
from backtest_sandbox.api.config_document import config_document
from backtest_sandbox.api.mcp_server import build_server
from backtest_sandbox.domain.errors import InvalidRequest, NotFound, QuotaExceeded
from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.domain.tenants import parse_api_tokens
from backtest_sandbox.jobs.service import BacktestService
from backtest_sandbox.jobs.store import NewJob
from backtest_sandbox.jobs.store.sqlite import SqliteJobStore
from tests.mcp_helpers import call, connect_http, error
from tests.unit.fake_engine import FakeEngine, config

CODE = "import backtrader as bt\nclass S(bt.Strategy):\n    pass\n"
BLOCK = CODE + "# block\n"
TOKEN_A = "tok-a-0123456789abcdef"
TOKEN_B = "tok-b-fedcba9876543210"
TOKENS = f"{TOKEN_A}:tenant_a,{TOKEN_B}:tenant_b"
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
UNAUTHORIZED = {"error": "invalid_token", "error_description": "Authentication required"}


def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(state_dir=tmp_path / "state", data_dir=tmp_path / "data", **changes)


# -- tokens ------------------------------------------------------------------------------------


def test_tokens_map_to_tenants() -> None:
    spec = f" {TOKEN_A}:tenant_a , {TOKEN_B}:tenant_b,rotated-token:tenant_a,"
    assert parse_api_tokens(spec) == {
        TOKEN_A: "tenant_a",
        TOKEN_B: "tenant_b",
        "rotated-token": "tenant_a",
    }
    assert parse_api_tokens("") == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("s3cret", "entry 1 must be token:tenant", id="no-colon"),
        pytest.param("a:x,s3cret:", "entry 2 must be token:tenant", id="no-tenant"),
        pytest.param(":tenant", "entry 1 must be token:tenant", id="no-token"),
        pytest.param("s3c ret:t", "entry 1: the token must be visible ASCII, without blanks",
                     id="blank-in-token"),
        pytest.param("s3crét:t", "entry 1: the token must be visible ASCII, without blanks",
                     id="non-ascii-token"),
        pytest.param(
            "s3cret:bad tenant",
            "entry 1: the tenant name must be 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            id="bad-tenant",
        ),
        pytest.param("s3cret:a,s3cret:b", "entry 2: this token is already given to another entry",
                     id="duplicate"),
    ],
)
def test_malformed_tokens_are_refused_without_echoing_them(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_api_tokens(spec)
    assert str(refused.value) == f"BACKTEST_API_TOKENS: {message}"
    assert "s3c" not in str(refused.value)


def test_a_token_finds_its_tenant_and_nothing_else_does() -> None:
    tokens = tenancy.TenantTokens(parse_api_tokens(TOKENS))
    assert tokens.tenant_of(TOKEN_A) == "tenant_a"
    assert tokens.tenant_of(TOKEN_B) == "tenant_b"
    for wrong in ("", TOKEN_A[:-1], TOKEN_A + "0", TOKEN_A.upper(), f"Bearer {TOKEN_A}", "é\udcff"):
        assert tokens.tenant_of(wrong) is None
    assert tokens.tenants == ["tenant_a", "tenant_b"]


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest against every configured token, on equal-length digests, whether
    the first one matches, the last one, or none."""
    tokens = tenancy.TenantTokens({f"token-{n}-xxxxxxxxxx": f"t{n}" for n in range(5)})
    compared: list[tuple[int, int]] = []
    real = tenancy.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(tenancy.hmac, "compare_digest", counting)
    for presented in ("token-0-xxxxxxxxxx", "token-4-xxxxxxxxxx", "no", "x" * 10_000):
        compared.clear()
        tokens.tenant_of(presented)
        assert compared == [(32, 32)] * 5


@pytest.mark.anyio
async def test_the_verified_access_names_the_tenant_not_the_token() -> None:
    tokens = tenancy.TenantTokens(parse_api_tokens(TOKENS))
    access = await tokens.verify_token(TOKEN_B)
    assert access is not None
    assert (access.client_id, access.scopes, access.expires_at) == ("tenant_b", [], None)
    assert TOKEN_B not in repr(access)
    assert await tokens.verify_token("nope") is None


def test_the_settings_never_show_the_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKTEST_API_TOKENS", TOKENS)
    settings = Settings()
    assert TOKEN_A not in repr(settings) and TOKEN_A not in str(settings.model_dump())
    assert settings.tenant_tokens() == {TOKEN_A: "tenant_a", TOKEN_B: "tenant_b"}


# -- the HTTP access decision ------------------------------------------------------------------


def test_http_with_tokens_requires_them(tmp_path: Path) -> None:
    access = tenancy.http_access(
        settings_for(tmp_path, api_tokens=TOKENS), host="127.0.0.1", port=8765
    )
    assert access.tokens is not None and len(access.tokens) == 2
    auth = access.auth_settings()
    assert auth is not None and auth.resource_server_url is None
    assert access.base_url == "http://127.0.0.1:8765"


@pytest.mark.parametrize(
    ("tokens", "host", "insecure", "message"),
    [
        pytest.param(
            "",
            "127.0.0.1",
            False,
            "BACKTEST_API_TOKENS: the HTTP transport needs at least one token:tenant entry "
            "(or --api-tokens); --insecure-no-auth serves without tokens on a loopback address "
            "only",
            id="no-tokens",
        ),
        pytest.param(
            "",
            "0.0.0.0",
            True,
            "--insecure-no-auth: only with a loopback --host (127.0.0.1, localhost, ::1), "
            "not '0.0.0.0'",
            id="insecure-on-all-interfaces",
        ),
        pytest.param(
            TOKENS,
            "127.0.0.1",
            True,
            "--insecure-no-auth: cannot be combined with BACKTEST_API_TOKENS; drop one",
            id="insecure-with-tokens",
        ),
        pytest.param(
            "s3cret-token",
            "127.0.0.1",
            False,
            "BACKTEST_API_TOKENS: entry 1 must be token:tenant",
            id="malformed",
        ),
    ],
)
def test_http_refuses_to_start_open(
    tmp_path: Path, tokens: str, host: str, insecure: bool, message: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        tenancy.http_access(
            settings_for(tmp_path, api_tokens=tokens),
            host=host,
            port=8765,
            insecure_no_auth=insecure,
        )
    assert str(refused.value) == message


def test_the_insecure_opt_out_is_one_local_tenant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="backtest_sandbox.api.http_auth"):
        access = tenancy.http_access(
            settings_for(tmp_path), host="localhost", port=9000, insecure_no_auth=True
        )
    assert access.tokens is None and access.auth_settings() is None
    assert access.tenant_of(None) == "local"  # type: ignore[arg-type]
    assert "WITHOUT authentication" in caplog.text


def test_a_short_token_is_warned_about_by_tenant_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="backtest_sandbox.api.http_auth"):
        tenancy.http_access(
            settings_for(tmp_path, api_tokens=f"short1:tenant_s,{TOKEN_A}:tenant_a"),
            host="127.0.0.1",
            port=8765,
        )
    (record,) = caplog.records
    assert "tenant_s" in record.getMessage() and "short1" not in record.getMessage()


@pytest.mark.parametrize(
    ("host", "extra", "hosts"),
    [
        pytest.param(
            "127.0.0.1", "", ["127.0.0.1:8765", "localhost:8765", "[::1]:8765"], id="loopback"
        ),
        pytest.param(
            "0.0.0.0",
            "mcp.example.com, 10.0.0.5:8765",
            ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "mcp.example.com", "10.0.0.5:8765"],
            id="wildcard",
        ),
        pytest.param("10.0.0.5", "", ["10.0.0.5:8765"], id="one-address"),
        pytest.param("fd00::5", "", ["[fd00::5]:8765"], id="ipv6"),
    ],
)
def test_allowed_hosts_and_origins_follow_the_bind(
    tmp_path: Path, host: str, extra: str, hosts: list[str]
) -> None:
    settings = settings_for(tmp_path, api_tokens=TOKENS, allowed_hosts=extra)
    security = tenancy.http_access(settings, host=host, port=8765).security
    assert security.enable_dns_rebinding_protection
    assert security.allowed_hosts == hosts
    assert security.allowed_origins == [f"http://{h}" for h in hosts] + [
        f"https://{h}" for h in hosts
    ]


# -- quotas and fair claiming ------------------------------------------------------------------


def test_the_config_resource_states_the_quotas(tmp_path: Path) -> None:
    limits = config_document(settings_for(tmp_path, max_workers=4, tenant_max_queued=9))
    assert (limits["limits"]["tenant_max_running"], limits["limits"]["tenant_max_queued"]) == (
        4, 9,
    )


def test_quota_settings_default_and_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = settings_for(tmp_path, max_workers=3)
    assert (defaults.effective_tenant_max_running, defaults.tenant_max_queued) == (3, 100)
    monkeypatch.setenv("BACKTEST_TENANT_MAX_RUNNING", "2")
    monkeypatch.setenv("BACKTEST_TENANT_MAX_QUEUED", "7")
    configured = settings_for(tmp_path, max_workers=3)
    assert (configured.effective_tenant_max_running, configured.tenant_max_queued) == (2, 7)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_service(tmp_path: Path, engine: FakeEngine) -> Iterator[Callable[..., BacktestService]]:
    started: list[BacktestService] = []

    def make(**changes: Any) -> BacktestService:
        service = BacktestService(settings_for(tmp_path, **changes), engine)
        service.start()
        started.append(service)
        return service

    yield make
    engine.release.set()
    for service in started:
        service.close()


def wait_for(service: BacktestService, tenant: str, backtest_id: str, status: JobStatus) -> None:
    job = service.wait(tenant, backtest_id, lambda job: job.status is status, timeout=10)
    assert job.status is status, f"{backtest_id} never {status}"


def test_the_queued_quota_refuses_a_submission_and_names_the_rule(
    make_service: Callable[..., BacktestService], engine: FakeEngine
) -> None:
    service = make_service(max_workers=1, tenant_max_queued=2)
    service.submit("a", BLOCK, "python", config())
    engine.wait_started(1)
    queued = [service.submit("a", CODE + f"# {n}\n", "python", config()) for n in range(2)]
    with pytest.raises(QuotaExceeded) as refused:
        service.submit("a", CODE + "# 3\n", "python", config())
    assert str(refused.value) == (
        "tenant_max_queued: 2 of your backtests are queued, the most a tenant may have waiting;"
        " cancel some or wait until they start"
    )
    assert (refused.value.rule, refused.value.limit, refused.value.current) == (
        "tenant_max_queued", 2, 2,
    )
    assert service.stats("a").total == 3  # nothing was added
    assert service.submit("b", CODE, "python", config()).status is JobStatus.QUEUED  # per tenant
    service.cancel("a", queued[0].backtest_id)
    assert service.submit("a", CODE + "# 3\n", "python", config()).status is JobStatus.QUEUED


def test_a_cache_hit_is_answered_whatever_the_queue(
    make_service: Callable[..., BacktestService], engine: FakeEngine
) -> None:
    service = make_service(max_workers=1, tenant_max_queued=1)
    done = service.submit("a", CODE, "python", config())
    wait_for(service, "a", done.backtest_id, JobStatus.COMPLETED)
    service.submit("a", BLOCK, "python", config())
    engine.wait_started(2)
    service.submit("a", CODE + "# queued\n", "python", config())
    again = service.submit("a", CODE, "python", config())
    assert (again.status, again.cached) == (JobStatus.COMPLETED, True)


def test_a_tenant_at_its_running_quota_is_skipped(
    make_service: Callable[..., BacktestService], engine: FakeEngine
) -> None:
    service = make_service(max_workers=3, tenant_max_running=1)
    flood = [service.submit("a", BLOCK + f"# {n}\n", "python", config()) for n in range(3)]
    engine.wait_started(1)
    other = service.submit("b", BLOCK, "python", config())
    engine.wait_started(2)
    time.sleep(0.1)  # a third worker is free: it must not take another of a's jobs
    assert engine.running == 2
    assert engine.runs == [flood[0].backtest_id, other.backtest_id]
    assert (service.stats("a").running, service.stats("a").queued) == (1, 2)
    engine.release.set()
    for job in flood:
        wait_for(service, "a", job.backtest_id, JobStatus.COMPLETED)
    assert engine.max_running == 2


def test_claim_skips_tenants_at_the_cap(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        for n, tenant in enumerate(["a", "a", "b"]):
            store.insert(
                NewJob(
                    id=f"bt_{n:032x}", tenant=tenant, language="python", code="x",
                    config_json="{}", symbol="SPY", timeframe="D1",
                )
            )
        first = store.claim_next(max_running_per_tenant=1)
        second = store.claim_next(max_running_per_tenant=1)
        assert [first and first.tenant, second and second.tenant] == ["a", "b"]
        assert store.claim_next(max_running_per_tenant=1) is None  # a is at its cap
        third = store.claim_next()
        assert third is not None and third.tenant == "a"
    finally:
        store.close()


# -- the audit log -----------------------------------------------------------------------------


def sha(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "backtest_sandbox.audit"]


def test_one_audit_line_per_submission_cancel_delete_and_finish(
    make_service: Callable[..., BacktestService],
    engine: FakeEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(max_workers=1, tenant_max_queued=1)
    secret_code = CODE + "# block\nSECRET_ALPHA = 42\n"
    with caplog.at_level(logging.INFO, logger="backtest_sandbox.audit"):
        running = service.submit("a", secret_code, "python", config()).backtest_id
        engine.wait_started(1)
        queued = service.submit("a", CODE, "python", config()).backtest_id
        with pytest.raises(QuotaExceeded):
            service.submit("a", CODE + "# more\n", "python", config())
        with pytest.raises(InvalidRequest):
            service.submit("a", CODE, "python", config(commission=-1))
        service.cancel("a", running)
        wait_for(service, "a", queued, JobStatus.COMPLETED)
        with pytest.raises(NotFound):
            service.cancel("b", queued)  # another tenant's: audited as not found
        with pytest.raises(NotFound):
            service.delete("b", "bt_1\nforged line")
        service.delete("a", queued)
    lines = audit_lines(caplog)
    more = CODE + "# more\n"
    assert lines[:4] == [
        f"submit tenant=a backtest_id={running} code_sha256={sha(secret_code)} status=queued"
        " cached=false error_type=-",
        f"submit tenant=a backtest_id={queued} code_sha256={sha(CODE)} status=queued"
        " cached=false error_type=-",
        f"submit tenant=a backtest_id=- code_sha256={sha(more)} status=rejected"
        " rule=tenant_max_queued",
        f"submit tenant=a backtest_id=- code_sha256={sha(CODE)} status=rejected"
        " field=config.commission",
    ]
    # The worker sees the cancel and runs the next job while the cancel is being logged.
    assert sorted(lines[4:7]) == sorted([
        f"cancel tenant=a backtest_id={running} code_sha256={sha(secret_code)} before=running"
        " status=cancelled",
        f"finish tenant=a backtest_id={running} code_sha256={sha(secret_code)}"
        " status=discarded error_type=- seconds=0.0",
        f"finish tenant=a backtest_id={queued} code_sha256={sha(CODE)} status=completed"
        " error_type=- seconds=0.0",
    ])
    assert lines[7:] == [
        f"cancel tenant=b backtest_id={queued} code_sha256=- status=not_found",
        "delete tenant=b backtest_id=invalid code_sha256=- status=not_found",
        f"delete tenant=a backtest_id={queued} code_sha256={sha(CODE)} before=completed"
        " status=deleted",
    ]
    assert "SECRET_ALPHA" not in caplog.text


# -- the HTTP surface, in-process --------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class LiveServer:
    def __init__(self, url: str, service: BacktestService) -> None:
        self.url = url
        self.service = service


@pytest.fixture
async def live(
    tmp_path: Path, engine: FakeEngine, free_tcp_port: int
) -> AsyncIterator[LiveServer]:
    """build_server + the SDK's streamable HTTP app, as `serve` wires them, on a free port."""
    settings = settings_for(tmp_path, max_workers=1, api_tokens=TOKENS)
    access = tenancy.http_access(settings, host="127.0.0.1", port=free_tcp_port)
    service = BacktestService(settings, engine)
    service.start()
    app = build_server(service, access=access).streamable_http_app(
        transport_security=access.security, host="127.0.0.1"
    )
    config_ = uvicorn.Config(
        app, host="127.0.0.1", port=free_tcp_port, log_level="warning", ws="none", lifespan="on"
    )
    server = uvicorn.Server(config_)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(server.serve)
            with anyio.fail_after(10):
                while not server.started:
                    await anyio.sleep(0.01)
            yield LiveServer(f"http://127.0.0.1:{free_tcp_port}/mcp", service)
            server.should_exit = True
    finally:
        engine.release.set()
        service.close()


def client_for(url: str, token: str) -> AbstractAsyncContextManager[Client]:
    return connect_http(url, token, read_timeout_seconds=10)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nope", f"Bearer {TOKEN_A}x", f"Basic {TOKEN_A}", f"Bearer  {TOKEN_A}"],
    ids=["none", "wrong", "longer", "basic", "two-spaces"],
)
async def test_no_valid_token_is_401_before_anything_runs(
    live: LiveServer, authorization: str | None, engine: FakeEngine
) -> None:
    headers = MCP_HEADERS | ({"authorization": authorization} if authorization else {})
    call_tool = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "run_backtest", "arguments": {"code_content": CODE, "config": config()}},
    }
    async with httpx2.AsyncClient() as http:
        for body in (INITIALIZE, call_tool):
            response = await http.post(live.url, json=body, headers=headers)
            assert response.status_code == 401
            assert response.json() == UNAUTHORIZED
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert engine.runs == []
    assert live.service.stats("tenant_a").total == 0


@pytest.mark.anyio
async def test_each_request_acts_for_its_tokens_tenant(live: LiveServer) -> None:
    async with client_for(live.url, TOKEN_A) as a, client_for(live.url, TOKEN_B) as b:
        mine = (await call(a, "run_backtest", code_content=CODE, config=config()))["backtest_id"]
        unknown = "bt_" + "0" * 32
        for tool, extra in [
            ("get_backtest_status", {}),
            ("read_backtest", {}),
            ("read_backtest_orders", {}),
            ("read_backtest_chart", {"name": "equity"}),
            ("cancel_backtest", {}),
            ("delete_backtest", {}),
        ]:
            foreign = await error(b, tool, backtest_id=mine, **extra)
            missing = await error(b, tool, backtest_id=unknown, **extra)
            assert foreign == missing.replace(unknown, mine)
            assert foreign == f"backtest_id: no backtest {mine!r}"
        assert (await call(b, "list_backtests"))["backtests"] == []
        assert (await call(a, "get_backtest_status", backtest_id=mine))["backtest_id"] == mine
        again = await call(b, "run_backtest", code_content=CODE, config=config())
        assert again["cached"] is False
    assert live.service.stats("tenant_a").total == 1
    assert live.service.stats("tenant_b").total == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "value", "status", "text"),
    [
        ("host", "evil.example:8765", 421, "Invalid Host header"),
        ("origin", "http://evil.example", 403, "Invalid Origin header"),
    ],
)
async def test_dns_rebinding_is_refused(
    live: LiveServer, header: str, value: str, status: int, text: str
) -> None:
    headers = MCP_HEADERS | {"authorization": f"Bearer {TOKEN_A}", header: value}
    async with httpx2.AsyncClient() as http:
        response = await http.post(live.url, json=INITIALIZE, headers=headers)
        assert (response.status_code, response.text) == (status, text)
        port = live.url.split(":")[2].split("/")[0]
        fine = headers | {"host": f"localhost:{port}", "origin": f"http://localhost:{port}"}
        assert (await http.post(live.url, json=INITIALIZE, headers=fine)).status_code == 200


@pytest.mark.anyio
async def test_a_session_is_bound_to_the_tenant_that_opened_it(live: LiveServer) -> None:
    async with httpx2.AsyncClient() as http:
        opened = await http.post(
            live.url, json=INITIALIZE, headers=MCP_HEADERS | {"authorization": f"Bearer {TOKEN_A}"}
        )
        session = opened.headers["mcp-session-id"]
        hijack = await http.post(
            live.url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
            headers=MCP_HEADERS
            | {"authorization": f"Bearer {TOKEN_B}", "mcp-session-id": session},
        )
    assert hijack.status_code == 404


@pytest.mark.anyio
async def test_tokens_are_never_logged(live: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        async with client_for(live.url, TOKEN_A) as a:
            await call(a, "run_backtest", code_content=CODE, config=config())
        async with httpx2.AsyncClient() as http:
            await http.post(
                live.url, json=INITIALIZE, headers=MCP_HEADERS | {"authorization": "Bearer s3cr3t"}
            )
    assert caplog.records
    assert "submit tenant=tenant_a" in caplog.text
    for record in caplog.records:
        for secret in (TOKEN_A, "s3cr3t"):
            assert secret not in record.getMessage() and secret not in str(record.args)


def test_tokens_from_a_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{'a' * 20}:tenant_a\n{'b' * 20}:tenant_b,\n\n")
    settings = Settings(state_dir=tmp_path, api_tokens_file=tokens)
    assert settings.tenant_tokens() == {"a" * 20: "tenant_a", "b" * 20: "tenant_b"}
    missing = Settings(state_dir=tmp_path, api_tokens_file=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="^BACKTEST_API_TOKENS_FILE: cannot be read"):
        missing.tenant_tokens()
