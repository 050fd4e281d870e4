"""The adversarial corpus: reading the cases, running them against the real engine, and
observing the host around each run.

Every `security/corpus/*.py` is one hostile strategy. Its header (the leading `#` lines) says
what the host must see:

    # attack: what the strategy tries, in one line
    # expect: runtime_error | timeout      the verdicts allowed (tight; each set justified)
    # expect-runsc: crashed                optional: the set under gVisor, when it differs
    # why: why a set has more than one verdict, or why the runsc set differs
    # checks: the host invariant this case proves
    # control: the control that stops it (THREAT_MODEL.md maps every case to one)
    # config: {"timeout_seconds": 5}       optional: BacktestConfig fields over the defaults
    # proof: ATTEMPTED fork                regexes the logs must match: the attack really ran
    # raises: BlockingIOError|RuntimeError when the verdict is runtime_error, the exception type
    # message: look-ahead                  a regex the error's message must match
    # integrity: {"claim_matches": false}  fields the completed result's integrity must have
    # forged-final-value: 1e7              the number the strategy forged: never published
    #                                      (except in a residual case, where it is)
    # exit-code: 137                       when the verdict is crashed, the exit code

Any key may have a `-runsc` (or `-runc`) twin that replaces it under that runtime, for the
few places where gVisor's kernel answers differently (say why in `# why:`).
    # residual: text                       a documented residual risk (THREAT_MODEL.md)
    # pair: victim                         runs concurrently with its partner (isolation cases)

This module imports nothing from pytest: the fixtures in conftest.py drive it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.models import JobStatus, RunOutcome
from backtest_sandbox.domain.settings import BUILTIN_SECCOMP_PROFILE
from backtest_sandbox.jobs.engine import Engine, RunRequest
from backtest_sandbox.sandbox.containers import (
    LABEL_OWNER,
    LABEL_PROJECT,
    LABEL_RUN,
    process_owner_id,
)

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SECCOMP_PROFILE = BUILTIN_SECCOMP_PROFILE  # the server's default; shipped in the package
VERDICTS = frozenset(
    {
        "completed", "runtime_error", "timeout", "memory_limit", "crashed", "result_invalid",
        "unsupported_feature",
    }
)
REQUIRED_KEYS = ("attack", "expect", "checks", "control", "proof")
BASE_CONFIG: dict[str, Any] = {
    "symbol": "IDX",
    "timeframe": "D1",
    "start_date": date(2006, 1, 1),
    "end_date": date(2006, 12, 31),
    # A case that should end quickly but hangs costs this much, not the 120 s default.
    "timeout_seconds": 30.0,
}
SANDBOX_UID = 10001
# How long a leftover container or process may take to disappear before it counts as a leak.
PATIENCE_SECONDS = 15.0
# The environment variable the host process carries during the corpus run: a strategy that can
# read it (or its value's prefix) has seen a host secret.
CANARY_ENV = "BACKTEST_CANARY_SECRET"
CANARY_PREFIX = "host-canary-"
TRIVIAL_STRATEGY = """
import backtrader as bt

class Trivial(bt.Strategy):
    def next(self):
        pass
"""


class CorpusError(ValueError):
    """A corpus file's header is malformed."""


@dataclass(frozen=True)
class Case:
    """One corpus file and what its header promises."""

    path: Path
    header: dict[str, list[str]]

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def code(self) -> str:
        return self.path.read_text()

    def values(self, key: str, runtime: str) -> list[str]:
        """The header's values for `key`, or its `key-<runtime>` twin's when there is one."""
        return self.header.get(f"{key}-{runtime}", self.header.get(key, []))

    def expected(self, runtime: str) -> frozenset[str]:
        return frozenset(v.strip() for v in self.values("expect", runtime)[0].split("|"))

    def config_overrides(self) -> dict[str, Any]:
        return json.loads(self.header["config"][0]) if "config" in self.header else {}

    def proofs(self, runtime: str) -> list[str]:
        return self.values("proof", runtime)

    def raises(self, runtime: str) -> str | None:
        return next(iter(self.values("raises", runtime)), None)

    def integrity(self) -> dict[str, Any]:
        return json.loads(self.header["integrity"][0]) if "integrity" in self.header else {}

    def message(self) -> str | None:
        return self.header.get("message", [None])[0]

    def exit_code(self, runtime: str) -> int | None:
        value = next(iter(self.values("exit-code", runtime)), None)
        return None if value is None else int(value)

    @property
    def residual(self) -> bool:
        return "residual" in self.header

    @property
    def pair(self) -> str | None:
        return self.header.get("pair", [None])[0]


def parse_header(text: str) -> dict[str, list[str]]:
    """The `# key: value` lines before the first line that is not a comment. A line indented
    further (`#   more text`) continues the value above it."""
    header: dict[str, list[str]] = {}
    values: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"# ([a-z][a-z-]*):\s*(.*\S)\s*$", line)
        if match:
            values = header.setdefault(match[1], [])
            values.append(match[2])
        elif values is not None and re.match(r"#\s{2,}\S", line):
            values[-1] += " " + line[1:].strip()
    return header


def load_case(path: Path) -> Case:
    """Read one corpus file and check its header.

    Raises:
        CorpusError: a required key is missing, or a verdict or config is not valid.
    """
    header = parse_header(path.read_text())
    missing = [key for key in REQUIRED_KEYS if key not in header]
    if missing:
        raise CorpusError(f"{path.name}: header lacks {', '.join(missing)}")
    case = Case(path, header)
    for runtime in ("runc", "runsc"):
        unknown = case.expected(runtime) - VERDICTS
        if unknown:
            raise CorpusError(f"{path.name}: unknown verdicts {sorted(unknown)}")
        if len(case.expected(runtime)) > 1 and "why" not in header:
            raise CorpusError(f"{path.name}: a set of verdicts needs a `# why:` line")
        if f"expect-{runtime}" in header and "why" not in header:
            raise CorpusError(f"{path.name}: a runtime's own verdicts need a `# why:` line")
        if "runtime_error" in case.expected(runtime) and case.raises(runtime) is None:
            raise CorpusError(f"{path.name}: runtime_error expected without `# raises:`")
    BacktestConfig.model_validate({**BASE_CONFIG, **case.config_overrides()})
    return case


def load_corpus(directory: Path = CORPUS_DIR) -> list[Case]:
    return [load_case(path) for path in sorted(directory.glob("*.py"))]


def verdict_of(outcome: RunOutcome) -> str:
    """`completed`, or the error type of a failed run (what the host decided)."""
    if outcome.status is JobStatus.COMPLETED:
        return "completed"
    return outcome.error.type.value if outcome.error is not None else outcome.status.value


# --- The host around a run -------------------------------------------------------------------


@dataclass(frozen=True)
class HostProcess:
    pid: int
    uids: tuple[int, ...]
    cgroup: str
    cmdline: str

    def describe(self) -> str:
        return f"pid {self.pid} uids {self.uids} {self.cmdline[:80]!r} cgroup {self.cgroup[:120]!r}"


def host_processes() -> Iterator[HostProcess]:
    """Every process on the host that can still be read (some end while we look)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
            cgroup = Path(entry.path, "cgroup").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        uid_line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "Uid:")
        uids = tuple(int(u) for u in uid_line.split()[1:])
        yield HostProcess(int(entry.name), uids, cgroup, cmdline.decode(errors="replace"))


def survivors(
    gone_containers: Callable[[], Iterable[str]],
    live_containers: Callable[[], Iterable[str]],
    patience: float = PATIENCE_SECONDS,
) -> list[str]:
    """Host processes left behind: any process in the cgroup of a removed container, and any
    process of the sandbox uid that no live container of ours accounts for. Both sets are read
    again at every look: runs start and end around us.

    Only what is still there after `patience` seconds counts (see `persistent`).
    """

    def look() -> dict[int, str]:
        gone, live = list(gone_containers()), list(live_containers())
        found: dict[int, str] = {}
        for process in host_processes():
            in_a_gone_container = any(cid in process.cgroup for cid in gone)
            unaccounted = SANDBOX_UID in process.uids and not any(
                cid in process.cgroup for cid in live
            )
            if in_a_gone_container or unaccounted:
                found[process.pid] = process.describe()
        return found

    return persistent(look, patience)


def persistent(look: Callable[[], dict[Any, str]], patience: float) -> list[str]:
    """What `look` keeps finding for `patience` seconds. A concurrent run's container stops a
    moment before the engine removes it (under load, and under runsc, that moment can pass a
    second), and its processes die with it: those disappear; a real leak stays."""
    found = look()
    deadline = time.monotonic() + patience
    while found and time.monotonic() < deadline:
        time.sleep(0.5)
        again = look()
        found = {key: text for key, text in found.items() if key in again}
    return sorted(found.values())


@dataclass
class Canaries:
    """Host files no run may touch: the whole data catalog, and a file in the state dir and in
    a scratch dir. Hashed before the corpus, compared after every case."""

    paths: list[Path]
    roots: list[Path]
    before: dict[str, str] = field(default_factory=dict)

    @classmethod
    def plant(cls, data_dir: Path, state_dir: Path, scratch: Path) -> Canaries:
        planted = []
        for directory in (data_dir, state_dir, scratch):
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / ".security-canary"
            path.write_text(f"{CANARY_PREFIX}file {uuid.uuid4().hex}\n")
            planted.append(path)
        canaries = cls(paths=planted, roots=[data_dir])
        canaries.before = canaries.snapshot()
        return canaries

    def snapshot(self) -> dict[str, str]:
        files = set(self.paths)
        for root in self.roots:
            files.update(p for p in root.rglob("*") if p.is_file())
        digest: dict[str, str] = {}
        for path in sorted(files):
            try:
                digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as e:
                digest[str(path)] = f"unreadable: {e}"
        return digest

    def changed(self) -> list[str]:
        now = self.snapshot()
        keys = set(self.before) | set(now)
        return sorted(k for k in keys if self.before.get(k) != now.get(k))


class ContainerWatcher:
    """Follows the daemon's events for this project's containers: which ones a backtest id
    created (a cold run labels its container with the id), and which ones were destroyed.

    A warm-pool container is labelled `pool` when it starts, long before it is handed a run, so
    it cannot be tied to a backtest id; the host checks still hold because they look at every
    destroyed container: no process may remain in the cgroup of any of them.
    """

    def __init__(self, client: Any) -> None:
        self._by_run: dict[str, set[str]] = {}
        self._destroyed: set[str] = set()
        self._lock = threading.Lock()
        self._events = client.events(
            decode=True,
            filters={"type": "container", "event": ["create", "destroy"], "label": LABEL_PROJECT},
        )
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for event in self._events:
                run = event.get("Actor", {}).get("Attributes", {}).get(LABEL_RUN, "")
                with self._lock:
                    if event.get("Action") == "destroy":
                        self._destroyed.add(event["id"])
                    else:
                        self._by_run.setdefault(run, set()).add(event["id"])
        except Exception:  # closing the stream under us ends the thread
            return

    def created_for(self, backtest_id: str) -> set[str]:
        with self._lock:
            return set(self._by_run.get(backtest_id, set()))

    def destroyed(self) -> set[str]:
        with self._lock:
            return set(self._destroyed)

    def close(self) -> None:
        self._events.close()


def project_containers(client: Any) -> list[dict[str, Any]]:
    """This project's containers as the daemon lists them, in one call. (The high-level
    `containers.list` inspects each one afterwards, and fails when a concurrent run removes
    one in between.)"""
    found: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": LABEL_PROJECT})
    return found


def lingering_containers(
    client: Any, backtest_id: str, patience: float = PATIENCE_SECONDS
) -> list[str]:
    """Containers a finished run left: labelled with its id, or started by this process and
    stopped but not removed (a served warm container carries the `pool` label, not the id).
    Only what is still there after `patience` seconds counts (see `persistent`)."""

    me = process_owner_id()  # stopped containers of other processes are theirs to remove

    def look() -> dict[str, str]:
        found = {}
        for container in project_containers(client):
            labels, state = container.get("Labels") or {}, container.get("State")
            stopped_here = state in ("exited", "dead") and labels.get(LABEL_OWNER) == me
            if labels.get(LABEL_RUN) == backtest_id or stopped_here:
                found[container["Id"]] = (
                    f"{container['Id'][:12]} run={labels.get(LABEL_RUN)} {container.get('Status')}"
                )
        return found

    return persistent(look, patience)


@dataclass
class CaseRun:
    """What the host saw of one case."""

    case: Case
    runtime: str
    backtest_id: str
    outcome: RunOutcome
    started: float
    ended: float
    container_ids: set[str]
    containers_left: list[str]
    survivors: list[str]
    canaries_changed: list[str]

    @property
    def verdict(self) -> str:
        return verdict_of(self.outcome)

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    def summary(self) -> str:
        error = self.outcome.error
        detail = f" ({error.message[:120]})" if error else ""
        return f"{self.case.stem}: {self.verdict} in {self.elapsed:.1f} s{detail}"


class CorpusRunner:
    """Runs cases through one `Engine`, two at a time, and checks the host after each."""

    def __init__(
        self, engine: Engine, client: Any, runtime: str, canaries: Canaries, parallel: int = 2
    ) -> None:
        self.engine = engine
        self.client = client
        self.runtime = runtime
        self.canaries = canaries
        self.parallel = parallel
        self.watcher = ContainerWatcher(client)

    def request(self, case: Case) -> RunRequest:
        return self._request(case.stem, case.code, case.config_overrides())

    def _request(self, name: str, code: str, overrides: dict[str, Any]) -> RunRequest:
        config = BacktestConfig.model_validate({**BASE_CONFIG, **overrides})
        backtest_id = f"sec-{self.runtime}-{name}-{uuid.uuid4().hex[:8]}"
        return RunRequest(backtest_id=backtest_id, code=code, config=config)

    def run_case(self, case: Case) -> CaseRun:
        request = self.request(case)
        started = time.monotonic()
        outcome = self.engine.run(request)
        ended = time.monotonic()
        return self._inspect(case, request, outcome, started, ended)

    def _inspect(
        self, case: Case, request: RunRequest, outcome: RunOutcome, started: float, ended: float
    ) -> CaseRun:
        served = self.watcher.created_for(request.backtest_id)

        def gone() -> set[str]:
            return self.watcher.destroyed() | served

        def live() -> list[str]:
            removed = gone()
            return [c["Id"] for c in project_containers(self.client) if c["Id"] not in removed]

        return CaseRun(
            case=case,
            runtime=self.runtime,
            backtest_id=request.backtest_id,
            outcome=outcome,
            started=started,
            ended=ended,
            container_ids=served,
            containers_left=lingering_containers(self.client, request.backtest_id),
            survivors=survivors(gone, live),
            canaries_changed=self.canaries.changed(),
        )

    def run_pair(self, victim: Case, searcher: Case) -> list[CaseRun]:
        """The victim first; the searcher once the victim reports progress (its harness is
        running its bars), so that the search happens while the victim runs. The test checks
        that the two runs overlapped."""
        request = self.request(victim)
        victim_running = threading.Event()
        result: dict[str, CaseRun] = {}

        def run_victim() -> None:
            started = time.monotonic()
            outcome = self.engine.run(request, on_progress=lambda done, total: victim_running.set())
            result["victim"] = self._inspect(victim, request, outcome, started, time.monotonic())
            victim_running.set()  # never leave the searcher waiting for a victim that ended

        thread = threading.Thread(target=run_victim)
        thread.start()
        victim_running.wait(timeout=60)
        searched = self.run_case(searcher)
        thread.join()
        return [result["victim"], searched]

    def run_all(self, cases: list[Case]) -> dict[str, CaseRun]:
        """Every case, `parallel` at a time; the isolation pair (the longest unit) first. The
        rest keep their alphabetical order, which mixes CPU-bound cases (time_*, the bombs)
        with quick ones: two spinning cases side by side would starve a third run's start."""
        pairs = {case.pair: case for case in cases if case.pair}
        units: list[list[Case]] = [[c] for c in cases if not c.pair]
        if "victim" in pairs and "searcher" in pairs:
            units.insert(0, [pairs["victim"], pairs["searcher"]])
        elif pairs:
            raise CorpusError("an isolation case runs only together with its partner")
        runs: dict[str, CaseRun] = {}
        with ThreadPoolExecutor(self.parallel) as pool:
            for finished in pool.map(self._run_unit, units):
                runs.update((run.case.stem, run) for run in finished)
        return runs

    def _run_unit(self, unit: list[Case]) -> list[CaseRun]:
        return self.run_pair(*unit) if len(unit) == 2 else [self.run_case(unit[0])]

    def trivial_run(self) -> RunOutcome:
        """A plain strategy after the corpus: the engine still answers."""
        return self.engine.run(self._request("trivial", TRIVIAL_STRATEGY, {}))

    def close(self) -> None:
        self.watcher.close()
