# attack: exit with status 137 (128 + SIGKILL), the status an OOM kill leaves, to have a
#   failure blamed on the platform's memory limit
# expect: crashed
# exit-code: 137
# checks: memory_limit comes only from Docker's OOMKilled flag, never from an exit status
# control: the supervisor's verdict order (OOMKilled from the container state)
# proof: ATTEMPTED fake an OOM kill
import os

import backtrader as bt


class Exit137(bt.Strategy):
    def start(self):
        print("ATTEMPTED fake an OOM kill with exit status 137", flush=True)
        os._exit(137)
