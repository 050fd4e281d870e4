# attack: crash the interpreter with a segmentation fault (a NULL read through ctypes)
# expect: crashed
# exit-code: 139
# checks: a signal death is crashed with the signal named, and leaves no core dump (core=0)
# control: the supervisor; ulimit core 0
# proof: ATTEMPTED segfault
import ctypes

import backtrader as bt


class Segfault(bt.Strategy):
    def start(self):
        print("ATTEMPTED segfault", flush=True)
        ctypes.string_at(0)
