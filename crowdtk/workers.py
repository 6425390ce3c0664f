"""Worker processes that end with the command that started them (``synth`` and ``gen-density`` ``--workers``).

A ProcessPoolExecutor's workers are forked children that wait for work on the pool's queue. When
the command is killed with SIGKILL, nothing runs in it to stop them: they finish the calls already
queued and then wait forever (two workers of ~107 MB each for ``synth --workers 2``), holding the
command's stdout and stderr, so ``crowdtk synth --workers 2 2>&1 | cat`` never ended.

Each worker therefore asks the kernel for SIGKILL when its parent dies (Linux's
``prctl(PR_SET_PDEATHSIG)``), chosen over a pipe or thread that watches the parent because it needs
nothing running in the worker and acts at once, even while the worker is busy in native code.
A parent that died before the request (between the fork and the worker's first line) would never
send the signal, so the worker then checks that its parent is still the process that made the pool,
and leaves if not. Where ``prctl`` is not available (other systems) a daemon thread polls the
parent instead, once a second. SIGKILL rather than SIGTERM: a worker's half-written file lies in
the dead command's temporary folder, which nothing could use anyway, and SIGTERM would run the
command's own handler, inherited through fork.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 1.0  # how often the fallback thread looks at the parent


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of ``workers`` processes that die with this process, however it ends."""
    return ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))


def die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when ``parent`` (the process that made the pool) ends."""
    if not _kernel_kills_orphan():
        threading.Thread(target=_exit_when_orphaned, args=(parent,), name="crowdtk-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the request above: no signal will come
        os._exit(1)


def _kernel_kills_orphan() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; False where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return (
            libc.prctl(
                _PR_SET_PDEATHSIG,
                ctypes.c_ulong(signal.SIGKILL),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            )
            == 0
        )
    except (OSError, AttributeError):  # no C library to load, or no prctl in it
        return False


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(1)
