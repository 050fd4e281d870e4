# attack: abuse the progress channel: write a progress past the end, a negative one, garbage,
#   and 48 MiB of it, so that the host's progress reader breaks or reports nonsense
# expect: completed
# checks: the host reads at most 64 bytes of progress and ignores what does not parse or is out
#   of range; the run completes and its result is the harness's, not the garbage
# control: the host's capped, validated progress reads (RunDir.read_progress)
# proof: ATTEMPTED progress garbage: \d+ MiB written
import os
import time

import backtrader as bt

LIES = [b"999999 1\n", b"-5 255\n", b"nan inf\n", b"\xff\xfe\x00\n", b"1 0\n"]


class ProgressFlood(bt.Strategy):
    def start(self):
        fd = os.open("/out/progress", os.O_WRONLY)
        for lie in LIES:
            os.pwrite(fd, lie, 0)
            time.sleep(0.3)  # long enough for the host's 0.25 s poll to read each lie
        chunk = b"9" * (1 << 20)
        for offset in range(48):
            os.pwrite(fd, chunk, offset << 20)
        os.close(fd)
        print("ATTEMPTED progress garbage: 48 MiB written", flush=True)
