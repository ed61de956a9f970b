"""The stop signals of ``cluster-run``: SIGINT (Ctrl-C), SIGTERM and SIGHUP end a run alike.

The first signal interrupts the run (:class:`RunInterrupted`; exit code 128 + the signal's
number: 130, 143, 129). The run then stops every process on the hosts, gathers, records and
reports. While the hosts' processes are being stopped, later signals are only counted: the stop
always finishes, so nothing is left running. A second signal skips the gather, or ends it if it
has begun; ``run.json`` is still written.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_RAISE, _COUNT, _RAISE_SECOND = "raise", "count", "raise-second"


class RunInterrupted(KeyboardInterrupt):
    """A stop signal arrived; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    return signal.Signals(signum).name


class StopSignals:
    """Installs the handlers for the duration of a run (main thread only; else a no-op).

    ``received`` lists the signals that arrived, in order. While the run runs the first one
    raises :class:`RunInterrupted`; after that, or after :meth:`begin_stop`, signals are only
    counted; inside :meth:`gathering` a second signal raises again.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._mode = _RAISE
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        raising = self._mode == _RAISE or (self._mode == _RAISE_SECOND and len(self.received) > 1)
        if raising:
            self._mode = _COUNT  # NOTE: the stop path that follows must not be interrupted
            raise RunInterrupted(signum)
        log.warning("%s received: stopping the hosts' processes first", signal_name(signum))

    @property
    def skip_gather(self) -> bool:
        """Whether a second signal arrived (the gather is skipped)."""
        return len(self.received) > 1

    def begin_stop(self) -> None:
        """From now on signals are only counted (except inside :meth:`gathering`)."""
        self._mode = _COUNT

    @contextmanager
    def gathering(self) -> Iterator[None]:
        """A second signal inside raises :class:`RunInterrupted` (the gather ends)."""
        self._mode = _RAISE_SECOND
        try:
            yield
        finally:
            self._mode = _COUNT
