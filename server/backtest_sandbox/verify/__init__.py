"""Verified mode's trusted side (docs/architecture.md "Verified mode"): the bar gate that
releases bars one at a time and stamps what the strategy commits, the checks those events
pass, and the referee that replays them and computes the published numbers. No user code runs
here, and nothing here talks to Docker: the gate speaks over whatever channel the sandbox gives
it.

May import: `image/`, `domain/`.
"""
