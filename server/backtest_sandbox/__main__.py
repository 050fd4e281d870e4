"""`python -m backtest_sandbox`: the same as the `backtest-sandbox` command."""

from .cli import main

raise SystemExit(main())
