# attack: search everything visible for another concurrent run's code: every /proc entry's
#   command line, environment and open files, and every readable file outside the image's
#   /usr, while isolation_victim runs beside it
# expect: completed
# pair: searcher
# checks: the victim's marker is found nowhere; the searcher sees only its own processes
# control: one container per run (mount, PID, IPC namespaces; private /tmp and /dev/shm); the
#   host's run dirs are mounted only into their own container
# proof: ATTEMPTED search: \d+ files, \d+ processes: not found
import os

import backtrader as bt

# Built from parts, so that this source (in this run's own /job/spec.json) never matches.
MARKER = "-".join(["ISOLATION", "MARKER", "5d1c9e7a41b3c0f2"]).encode()
SKIP = ("/proc", "/sys", "/usr", "/dev")
MAX_BYTES = 4 << 20


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def read(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(MAX_BYTES)
    except OSError:
        return b""


def proc_paths():
    pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    for pid in pids:
        yield f"/proc/{pid}/cmdline"
        yield f"/proc/{pid}/environ"
        fd_dir = f"/proc/{pid}/fd"
        try:
            yield from (os.path.join(fd_dir, fd) for fd in os.listdir(fd_dir))
        except OSError:
            continue


def file_paths():
    for top in sorted(os.listdir("/")):
        root = "/" + top
        if root in SKIP or not os.path.isdir(root) or os.path.islink(root):
            continue
        for directory, _, names in os.walk(root):
            yield directory  # a directory named after the marker counts too
            yield from (os.path.join(directory, name) for name in names)
    yield from ("/dev/shm/" + name for name in os.listdir("/dev/shm"))


class Searcher(bt.Strategy):
    def start(self):
        found, files = [], 0
        processes = sum(entry.isdigit() for entry in os.listdir("/proc"))
        for path in (*proc_paths(), *file_paths()):
            files += 1
            if MARKER in path.encode() or (os.path.isfile(path) and MARKER in read(path)):
                found.append(path)
        print(f"ATTEMPTED search: {files} files, {processes} processes: "
              f"{'FOUND' if found else 'not found'}", flush=True)  # fmt: skip
        if found:
            raise SandboxBreach(f"another run's code is visible: {found[:10]}")
