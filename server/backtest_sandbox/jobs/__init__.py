"""Jobs: the engine (one request to one outcome: checks, data, sandbox, metrics), the durable
store (SQLite, or PostgreSQL shared by several processes), the scheduler's worker slots, the
cache key, the service every front end calls, the shapes it answers with, and the audit log.

May import: `sandbox/`, `data/`, `image/`, `domain/`.
"""
