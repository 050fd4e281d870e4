# attack: replace /out/result.json with a symlink (to /etc/passwd, to the host's files), so
#   that the host follows it when it reads the result back
# expect: completed
# checks: /out is owned by root and not writable by the sandbox: the file cannot be unlinked,
#   renamed over or replaced, so the attempt fails and the run completes normally. Were it to
#   succeed, the host reads with O_NOFOLLOW (result_invalid), never completed: the strategy
#   raises in that case so the verdict flips
# control: the root-owned /out (only the two pre-created files are writable); O_NOFOLLOW reads
# proof: ATTEMPTED unlink /out/result\.json: failed with EACCES
# proof: ATTEMPTED symlink /out/result\.json.new: failed with EACCES
import errno
import os

import backtrader as bt


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def plant_in_tmp_and_rename():
    os.symlink("/etc/passwd", "/tmp/result.json")
    os.rename("/tmp/result.json", "/out/result.json")  # EXDEV: another filesystem


ATTEMPTS = [
    ("unlink /out/result.json", lambda: os.unlink("/out/result.json")),
    ("symlink /out/result.json.new", lambda: os.symlink("/etc/passwd", "/out/result.json.new")),
    ("rename a symlink over /out/result.json", plant_in_tmp_and_rename),
    ("rename /out/result.json away", lambda: os.rename("/out/result.json", "/out/r.old")),
]


class ResultSymlink(bt.Strategy):
    def start(self):
        breaches = []
        for label, action in ATTEMPTS:
            try:
                action()
            except OSError as e:
                name = errno.errorcode.get(e.errno, type(e).__name__)
                print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                continue
            print(f"ATTEMPTED {label}: SUCCEEDED", flush=True)
            breaches.append(label)
        if breaches:
            raise SandboxBreach(f"result channel replaced: {breaches}")
