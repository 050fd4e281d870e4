"""The front ends: the CLI, the MCP server (stdio and HTTP with per-tenant tokens), the config
document, charts and `doctor`.

May import: every layer below (`jobs/`, `sandbox/`, `data/`, `image/`, `domain/`).
"""
