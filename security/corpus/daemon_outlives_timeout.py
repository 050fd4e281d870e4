# attack: start a double-forked daemon, then spin until the host kills the run, hoping the
#   daemon outlives the kill
# expect: timeout
# checks: after the timeout kill and the container's removal, no process of the daemon
#   survives on the host
# control: the container's PID namespace and cgroup, removed by the host after the kill
# config: {"timeout_seconds": 6}
# proof: ATTEMPTED daemon then spin
# proof: daemon pid \d+ is beating
import os
import signal
import time

import backtrader as bt


def be_a_daemon(ready_fd: int) -> None:
    """The grandchild: detached, deaf to polite signals, beating to /tmp."""
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        os.write(ready_fd, str(os.getpid()).encode())
        os.close(ready_fd)
        while True:
            with open("/tmp/heartbeat", "w") as stream:
                stream.write(f"{time.time()}\n")
            time.sleep(0.1)
    finally:
        os._exit(0)  # never return into the harness's code


class DaemonThenSpin(bt.Strategy):
    def start(self):
        print("ATTEMPTED daemon then spin", flush=True)
        ready_r, ready_w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                be_a_daemon(ready_w)
            os._exit(0)
        os.wait()
        os.close(ready_w)
        print(f"daemon pid {os.read(ready_r, 32).decode()} is beating", flush=True)
        while True:
            pass
