"""A verified run's conversation with its harness, held on a thread while the run goes on.

The sandbox provides the channel (FIFOs in the run directory under runc, fifo.py; the attach
connection under gVisor, stdio.py); the job provides the conversation (the bar gate, which
lives in verify/ and knows nothing of either).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from backtest_sandbox.domain.models import RunError

from .logs import JOIN_SECONDS, HeadTail


class BarChannel(Protocol):
    """Lines from the harness, bytes to it (StdioChannel, FifoChannel)."""

    @property
    def logs(self) -> HeadTail | None:
        """The container's output, when it travels on this channel too."""
        ...

    @property
    def end_grace_seconds(self) -> float:
        """How long its reader may take to end once the container stopped."""
        ...

    @property
    def pipe_paths(self) -> tuple[Path, Path] | None:
        """The two FIFOs (bars, commits) when the pipe is made of them."""
        ...

    def read_line(self, cap: int, timeout: float | None = None) -> bytes | None: ...

    def send(self, data: bytes) -> bool: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...

    def release(self) -> None: ...


class Conversation(Protocol):
    """What a job says with the harness over the channel (the verified run's bar gate)."""

    def talk(self, channel: BarChannel) -> RunError | None:
        """Hold the conversation to its end; the error that ends the run early, if any."""
        ...


class ConversationThread:
    """Holds a conversation on a thread of its own while the supervisor watches the run.

    When the conversation ends the run early, `stop_run` is called at once (the container is
    killed); either way the channel is then read to its end (the logs, where they travel on it;
    and a writer blocked on a full pipe is never left so).
    """

    def __init__(
        self, channel: BarChannel, conversation: Conversation, stop_run: Callable[[], None]
    ) -> None:
        self._channel = channel
        self._conversation = conversation
        self._stop_run = stop_run
        self._problem: RunError | None = None
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._talk, name="sandbox-bars", daemon=True)
        self._thread.start()

    def _talk(self) -> None:
        try:
            self._problem = self._conversation.talk(self._channel)
            if self._problem is not None:
                self._stop_run_aside()
            self._channel.drain()
        except BaseException as e:  # top of a thread: result() hands it to the caller
            self._failed = e
            self._stop_run_aside()
        finally:
            self._channel.release()

    def _stop_run_aside(self) -> None:
        # On a thread of its own, while this one keeps reading: a container blocked writing
        # to the stream we stopped reading would otherwise hold the daemon's kill.
        threading.Thread(target=self._stop_run_quietly, name="sandbox-stop", daemon=True).start()

    def _stop_run_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the supervisor's deadline and kill still apply
            self._stop_run()

    @property
    def problem(self) -> RunError | None:
        """What ended the run early, if anything; read after `result`."""
        return self._problem

    def result(self) -> tuple[str, bool] | None:
        """Once the container has stopped: the logs, as `LogCollector.result` gives them, when
        they travel on the channel and its stream ended in time; else None.

        Raises:
            BaseException: what the conversation itself raised (a fault of the host's side).
        """
        self._thread.join(self._channel.end_grace_seconds)
        if self._thread.is_alive():
            self._channel.close()  # wakes the reader, which then ends
            self._thread.join(JOIN_SECONDS)
            return None
        if self._failed is not None:
            raise self._failed
        logs = self._channel.logs
        return None if logs is None else logs.text()
