"""Timing and memory of one step: a time limit, device synchronization, the peak memory."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from .setups import Step


class StepTimeout(Exception):
    """A step ran past the time limit."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (a no-op elsewhere)."""
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"{what} did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Step, device: torch.device, limit: float | None, what: str) -> float:
    with time_limit(limit, what):
        synchronize(device)
        began = time.perf_counter()
        step.run()
        synchronize(device)
        return time.perf_counter() - began


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (C++ log lines bypass ``sys.stderr``)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            sys.stderr.flush()
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(step: Step, device: torch.device) -> tuple[int, int, int]:
    """(peak, resident at the start, high-water above it) of one step, in bytes."""
    step.clear_grads()
    resident = step.resident_bytes()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step.run()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak, start, peak - start
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with quiet_stderr():  # the profiler's C++ back end logs its start and stop on stderr
        profiler.start()
    try:
        step.run()
    finally:
        with quiet_stderr():
            profiler.stop()
    events = sorted(
        (event.start_ns(), event.nbytes())  # type: ignore[union-attr]  # torch's _KinetoEvent stub lacks nbytes
        for event in profiler.profiler.kineto_results.events()  # type: ignore[union-attr]
        if event.name() == "[memory]"
    )
    current = high = 0
    for _, nbytes in events:
        current += nbytes
        high = max(high, current)
    return resident + high, resident, high
