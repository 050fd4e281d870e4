# attack: write NUL bytes, alone and inside lines, to truncate C strings or corrupt stored logs
# expect: completed
# checks: no NUL byte reaches the logs the host returns or stores
# control: cap_logs on the host (removes NUL)
# proof: ATTEMPTED NUL flood of \d+ bytes
import os

import backtrader as bt


def write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (gVisor's pipes do, at 64 KiB): loop until done."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class NulBytes(bt.Strategy):
    def start(self):
        blob = (b"\x00" * 1000 + b"before\x00after\n") * 1000
        marker = f"\nATTEMPTED NUL flood of {len(blob)} bytes\n".encode()
        # Each stream ends with the marker: the host merges the two pipes in no fixed order.
        write_all(2, b"\x00\x00\x00 stderr \x00" + marker)
        write_all(1, blob + marker)
