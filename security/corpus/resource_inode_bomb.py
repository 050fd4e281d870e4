# attack: create empty files in /tmp until the filesystem has no inode left
# expect: runtime_error
# expect-runsc: memory_limit | crashed | timeout
# exit-code-runsc: 137
# why: under runc /tmp has an inode cap (nr_inodes, one per 4 KiB of its size), so the flood
#   ends in ENOSPC. gVisor's tmpfs ignores nr_inodes: its inodes live in the Sentry's memory,
#   charged to the container, so the flood ends in an OOM kill there, after 8 to 40 s on this
#   machine (every file costs several trapped system calls on the ptrace platform); on a
#   slower or busier host the 60 s clock may end it first. All are the container's own limits.
#   Under gVisor the OOM kill in the container's cgroup (it kills the Sentry) is not always
#   recorded as OOMKilled by the time the host reads the container's state: seen once in four
#   full runs, exit 137 without the flag, so crashed. Both stop at the container's own limit;
#   the verdict is the less precise one (THREAT_MODEL.md, R8)
# checks: the inode flood ends inside the container's own limits (tmpfs inodes, kernel memory
#   charged to the container) and the host's inode tables are untouched
# control: /tmp tmpfs inode cap (nr_inodes); under gVisor the memory cgroup
# config: {"timeout_seconds": 60, "memory_mb": 256}
# proof: ATTEMPTED inode bomb
# proof: created 4096 files
# raises: OSError
import errno
import os

import backtrader as bt


class InodeBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED inode bomb", flush=True)
        os.mkdir("/tmp/inodes")
        created = 0
        while True:
            try:
                os.close(os.open(f"/tmp/inodes/{created}", os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as e:
                name = errno.errorcode.get(e.errno, e.errno)
                print(f"no more files after {created} files: {name}", flush=True)
                raise
            created += 1
            if created % 4096 == 0:
                print(f"created {created} files", flush=True)
