"""The Temporal backend (BACKTEST_BACKEND=temporal, docs/SCALING.md): `dispatch.py` starts and
cancels a workflow per backtest from `serve`, `workflow.py` is that workflow, and `worker.py`
is `backtest-sandbox worker`, which runs its activity with the local engine."""
