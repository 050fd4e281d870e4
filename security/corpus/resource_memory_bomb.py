# attack: allocate and touch memory until the machine runs out
# expect: memory_limit
# expect-runsc: memory_limit | crashed
# exit-code-runsc: 137
# why: under runc the kernel's OOM killer ends it and Docker records OOMKilled.
#   Under gVisor the OOM kill in the container's cgroup (it kills the Sentry) is not always
#   recorded as OOMKilled by the time the host reads the container's state: seen once in four
#   full runs, exit 137 without the flag, so crashed. Both stop at the container's own limit;
#   the verdict is the less precise one (THREAT_MODEL.md, R8)
# checks: the container is OOM-killed at its own limit (Docker records OOMKilled), the host
#   reports memory_limit, and the host's memory is untouched beyond the limit
# control: memory cgroup limit with memory+swap equal to it (no swap to hide in)
# config: {"memory_mb": 256}
# proof: ATTEMPTED memory bomb
# proof: hoarded \d+ MiB
import backtrader as bt

CHUNK = 8 << 20


class MemoryBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED memory bomb", flush=True)
        hoard = []
        while True:
            hoard.append(bytearray(CHUNK))  # bytearray zero-fills: every page is touched
            if len(hoard) % 4 == 0:
                print(f"hoarded {len(hoard) * CHUNK >> 20} MiB", flush=True)
