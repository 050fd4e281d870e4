# attack: ask for one allocation of 1 TiB at once
# expect: runtime_error
# expect-runsc: memory_limit | crashed
# exit-code-runsc: 137
# why: gVisor's Sentry does not apply the host's overcommit check: the 1 TiB mapping is
#   granted and bytearray's zero-fill touches it page by page until memory runs out.
#   Under gVisor the OOM kill in the container's cgroup (it kills the Sentry) is not always
#   recorded as OOMKilled by the time the host reads the container's state: seen once in four
#   full runs, exit 137 without the flag, so crashed. Both stop at the container's own limit;
#   the verdict is the less precise one (THREAT_MODEL.md, R8)
# checks: the kernel refuses the mapping (overcommit heuristic), Python raises MemoryError, and
#   the run fails as the strategy's error: no OOM kill of anything on the host
# control: memory cgroup limit and the kernel's overcommit check
# proof: ATTEMPTED huge allocation
# raises: MemoryError
import backtrader as bt


class HugeAlloc(bt.Strategy):
    def start(self):
        print("ATTEMPTED huge allocation of 1 TiB", flush=True)
        bytearray(1 << 40)
