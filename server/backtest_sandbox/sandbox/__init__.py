"""The trust boundary: hardened single-use containers, the run directory that is their only
channel, the supervisor's clock and kill, the verdict, the warm pool. `runner.SandboxRunner`
is the one entry point: a `SandboxJob` in, a `Verdict` out. Docker is called only from here
and from `image/`.

May import: `image/`, `domain/`.
"""
