# attack: a result that is not UTF-8 (raw 0xFF bytes inside the JSON strings), to break the
#   host's decoder or smuggle bytes into stored text
# expect: result_invalid
# checks: the host decodes strictly and calls anything else result_invalid
# control: the host's parse (strict UTF-8 decode)
# proof: ATTEMPTED non-UTF-8 result
import os

import backtrader as bt


class NotUtf8(bt.Strategy):
    def start(self):
        document = (
            b'{"protocol": 1, "outcome": "runtime_error", "backtrader_version": "\xff\xfe", '
            b'"error": {"exc_type": "\xc0\xaf", "message": "\xed\xa0\x80", "traceback": ""}}'
        )
        with open("/out/result.json", "wb") as stream:
            stream.write(document)
        print("ATTEMPTED non-UTF-8 result", flush=True)
        os._exit(0)
