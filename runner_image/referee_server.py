"""The referees' fork server: referee.py's imports done once, then a forked child per run.

Run as `python3 -I referee_server.py <fd>` by the host (server/backtest_sandbox/verify/
referee.py), <fd> being its end of a unix socketpair (SOCK_SEQPACKET). A fresh referee process
spends ~0.5 s of CPU importing Backtrader and pandas; a child forked from here has them already,
and is still a process of its own, so nothing of one run is left for the next. Runs no user
code: the children run referee.py's main, and the strategy is never in this process or theirs.

Each message from the host carries three fds: a run's stdin (read end), stdout and stderr (write
ends). The child puts them on 0, 1 and 2, closes every other fd, and is from then on what a
fresh `python3 -I referee.py` is: the same protocol, a traceback on stderr and exit 1 when it
fails. To the host, one message each: `F <pid>` with the child's pidfd (the host kills by pidfd,
never signalling a reused pid), then `X <pid> <exit code>` once it is reaped (minus the signal
that killed it, as subprocess has it). The host's end closing (the host is gone, or closed its
pool) ends the server, and its children with it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import socket
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.dont_write_bytecode = True  # as referee.py: runner_image stays clean

import referee  # noqa: E402  # all it imports: what each child would pay for


def serve(host: socket.socket) -> None:
    children: dict[int, int] = {}  # pidfd -> pid, until reaped
    with selectors.DefaultSelector() as selector:
        selector.register(host, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in selector.select():
                    if key.fileobj is host:
                        message, fds, _, _ = socket.recv_fds(host, 16, 3)
                        if not message:
                            return  # the host is gone, or closed the pool
                        pid = os.fork()
                        if pid == 0:
                            _child(fds)  # never returns
                        pidfd = os.pidfd_open(pid)  # not yet reaped: it is our child's
                        for fd in fds:
                            os.close(fd)  # the child's now: the next one gets none of them
                        children[pidfd] = pid
                        selector.register(pidfd, selectors.EVENT_READ)
                        socket.send_fds(host, [b"F %d" % pid], [pidfd])
                    else:
                        pid = children.pop(key.fd)
                        selector.unregister(key.fd)
                        os.close(key.fd)
                        _, status = os.waitpid(pid, 0)
                        host.send(b"X %d %d" % (pid, os.waitstatus_to_exitcode(status)))
        except (BrokenPipeError, ConnectionResetError):
            return  # the host is gone
        finally:
            for pidfd, pid in children.items():
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.waitpid(pid, 0)


def _child(fds: list[int]) -> None:
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the socket, the pidfds, the selector
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh process
        # sys.stdin, stdout and stderr are this process's own, never read or written: on the
        # new 0, 1 and 2 they are what a fresh process made of its pipes.
        referee.main()
        code = 0
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: the code tells
                stream.flush()
        os._exit(code)


if __name__ == "__main__":
    # ^C in the host's terminal reaches this process group: the host ends the server itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    referee.datafeed.warm_up()  # pandas' lazy set-up, once for every child
    gc.collect()
    gc.freeze()  # as the harness does: a child's collections leave these pages shared
    serve(socket.socket(fileno=int(sys.argv[1])))
