"""backtest-sandbox: untrusted Backtrader strategies, run in hardened single-use containers."""

from importlib.metadata import PackageNotFoundError, version

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import BacktestSandboxError, ErrorType, SandboxError
from backtest_sandbox.domain.models import JobStatus, RunError
from backtest_sandbox.domain.settings import Settings

try:
    __version__ = version("backtest-sandbox")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "BacktestConfig",
    "BacktestSandboxError",
    "ErrorType",
    "JobStatus",
    "RunError",
    "SandboxError",
    "Settings",
    "__version__",
]
