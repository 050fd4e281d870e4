# attack: a double-forked daemon (setsid, SIGTERM and SIGHUP ignored) that keeps beating after
#   the strategy has finished, to outlive the run
# expect: completed
# checks: nothing of it survives: no host process of the sandbox uid and none in the cgroup of
#   the destroyed container once the run is over
# control: the container's PID namespace (its init ending kills every process in it) and the
#   host removing the container (its cgroup) after every run
# proof: ATTEMPTED double-forked daemon
# proof: daemon pid \d+ is beating
import os
import signal
import time

import backtrader as bt


def be_a_daemon(ready_fd: int) -> None:
    """The grandchild: detached, deaf to polite signals, beating to /tmp and /out/progress."""
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        beats = 0
        while True:
            beats += 1
            with open("/tmp/heartbeat", "w") as stream:
                stream.write(f"{os.getpid()} {beats}\n")
            if beats == 1:
                os.write(ready_fd, str(os.getpid()).encode())
                os.close(ready_fd)
            time.sleep(0.1)
    finally:
        os._exit(0)  # never return into the harness's code


class Daemon(bt.Strategy):
    def start(self):
        print("ATTEMPTED double-forked daemon", flush=True)
        ready_r, ready_w = os.pipe()
        if os.fork() == 0:  # the first child: a new session, then fork again and leave
            os.setsid()
            if os.fork() == 0:
                be_a_daemon(ready_w)
            os._exit(0)
        os.wait()
        os.close(ready_w)
        pid = os.read(ready_r, 32).decode()
        print(f"daemon pid {pid} is beating", flush=True)
