"""Capping what a sandbox printed: bounded, valid text, whatever bytes came out."""

from __future__ import annotations


def cap_logs(raw: bytes, cap: int) -> tuple[str, bool]:
    """Keep the head and the tail of `raw` within `cap` bytes; returns (text, was it cut).

    Invalid UTF-8 is replaced and NUL bytes removed, so the logs are safe to store and show.
    """
    cut = len(raw) > cap
    if cut:
        half = cap // 2
        omitted = len(raw) - 2 * half
        raw = raw[:half] + f"\n[... {omitted} bytes cut ...]\n".encode() + raw[-half:]
    return raw.decode("utf-8", errors="replace").replace("\x00", ""), cut
