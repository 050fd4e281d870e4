"""The vocabulary every layer shares: config, results, statuses, error types, settings,
timeframes, metrics, the rules a submission's code and ids follow.

May import: nothing of this package outside `domain/` (pydantic, and numpy for the metrics).
"""
