"""Worker processes that do not outlive their parent.

A process pool's workers (and, through them, multiprocessing's resource tracker, which lives as long
as any process holds its pipe) keep running when their parent is killed with SIGKILL (the OOM
killer, a pre-empted job): nothing tells them.  :func:`exit_with_parent` is called first thing in
every worker process funloader starts (the ``funloader prepare`` pool's initializer, DALI's
``external_source`` workers) and makes the worker exit when its parent dies:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` asks the kernel to send SIGTERM the moment the
  parent dies (``death_signal=True``).  The kernel ties this to the parent *thread* that started the
  worker, so it is only used where that thread outlives the pool (prepare's own calling thread);
* everywhere else (other systems, or ``death_signal=False``) a daemon thread checks once per
  ``interval`` seconds whether ``os.getppid()`` is still the parent; when it changed (the worker was
  re-parented to init or a sub-reaper) the worker exits with ``os._exit(1)``.

Both also check once at the start, for a parent that died before the call.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

__all__ = ["exit_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_death_signal(signum: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, signum)`` through libc; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            os._exit(1)


def exit_with_parent(parent_pid: int, *, death_signal: bool = True, interval: float = 1.0) -> None:
    """Make this process exit when ``parent_pid`` (its parent, passed in by the parent) dies.

    Call it at the start of a worker process, e.g. ``ProcessPoolExecutor(initializer=exit_with_parent,
    initargs=(os.getpid(),))``.  Does nothing when called in ``parent_pid`` itself.
    ``death_signal``: use Linux's ``PR_SET_PDEATHSIG`` (SIGTERM) when available; otherwise, or when
    False, a daemon thread polls ``os.getppid()`` every ``interval`` seconds.
    """
    if parent_pid == os.getpid():
        return
    armed = death_signal and _set_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid, interval), name="funloader-exit-with-parent",
                         daemon=True).start()
