# attack: write 4 MiB of invalid UTF-8 (lone continuation bytes, overlongs, surrogates) to the
#   raw stdout and stderr descriptors, to break whatever decodes the logs
# expect: completed
# checks: the host returns bounded, valid text (invalid bytes replaced), and stores it
# control: cap_logs on the host (decode with replacement, cap)
# proof: ATTEMPTED invalid UTF-8 flood of \d+ bytes
import os

import backtrader as bt

GARBAGE = bytes(range(0x80, 0x100)) + b"\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80\xff\xfe\n"


def write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (gVisor's pipes do, at 64 KiB): loop until done."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class InvalidUtf8(bt.Strategy):
    def start(self):
        blob = GARBAGE * ((4 << 20) // len(GARBAGE))
        marker = f"\nATTEMPTED invalid UTF-8 flood of {len(blob)} bytes\n".encode()
        # Each stream ends with the marker: the host merges the two pipes in no fixed order,
        # so whichever comes last, the tail of the logs holds one.
        write_all(2, blob[: 1 << 20] + marker)
        write_all(1, blob + marker)
