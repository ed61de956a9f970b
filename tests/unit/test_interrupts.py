"""Stop signals of cluster-run: the first interrupts, later ones never cut the stop short."""

from __future__ import annotations

import os
import signal

import pytest

from torc_stress.cluster.interrupts import RunInterrupted, StopSignals


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                              (signal.SIGHUP, 129)])
def test_the_first_signal_interrupts_the_run_with_128_plus_its_number(
        signum: int, code: int) -> None:
    with StopSignals() as signals, pytest.raises(RunInterrupted) as info:
        send(signum)
    assert info.value.exit_code == code and isinstance(info.value, KeyboardInterrupt)
    assert signals.received == [signum]


def test_a_signal_after_the_first_is_only_counted_so_the_stop_finishes() -> None:
    with StopSignals() as signals:
        with pytest.raises(RunInterrupted):
            send(signal.SIGTERM)
        send(signal.SIGTERM)  # during the stop: no exception
        assert signals.skip_gather


def test_while_stopping_a_first_signal_is_counted_and_the_gather_still_runs() -> None:
    with StopSignals() as signals:
        signals.begin_stop()
        send(signal.SIGHUP)
        assert signals.received == [signal.SIGHUP] and not signals.skip_gather


def test_a_second_signal_during_the_gather_ends_the_gather() -> None:
    with StopSignals() as signals:
        signals.begin_stop()
        send(signal.SIGTERM)
        with pytest.raises(RunInterrupted), signals.gathering():
            send(signal.SIGTERM)
        send(signal.SIGTERM)  # after the gather: counted again
    assert len(signals.received) == 3


def test_the_previous_handlers_are_back_after_the_run() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
