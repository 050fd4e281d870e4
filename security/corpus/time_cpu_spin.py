# attack: spin the CPU forever
# expect: timeout
# checks: the host's own clock ends the run at its limit (SIGTERM, then SIGKILL) and the CPU
#   quota kept the spin to one CPU meanwhile
# control: the supervisor's wall-clock deadline; the CPU quota (nano_cpus)
# config: {"timeout_seconds": 6}
# proof: ATTEMPTED cpu spin
import backtrader as bt


class Spin(bt.Strategy):
    def start(self):
        print("ATTEMPTED cpu spin", flush=True)
        while True:
            pass
