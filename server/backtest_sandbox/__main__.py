"""`python -m backtest_sandbox`: the same as the `backtest-sandbox` command."""

from backtest_sandbox.api.cli import main

raise SystemExit(main())
