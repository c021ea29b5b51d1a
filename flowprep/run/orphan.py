"""Workers die with their parent: a run's helper processes never outlive the run's main process.

``kill -9`` of a run's main process must not leave loky workers or the multiprocessing Manager
behind, writing into staging with nobody to record a ledger line.  Each helper process calls
``watch_parent(pid)`` once: a daemon thread checks every ``POLL_S`` seconds that the main
process still lives and otherwise ends this process at once (``os._exit``; its ffmpeg child
then dies on a broken pipe).

Polling rather than Linux's ``prctl(PR_SET_PDEATHSIG)``: that signal fires when the *thread*
that forked the worker ends, and loky forks workers from its own manager thread, which may end
while the run goes on; and it exists on Linux only.  A direct child checks ``getppid()`` (it
changes the moment the parent dies, whatever happens to the pid later); others check the pid.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5
_watching: list[int] = []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch_parent(parent_pid: int) -> None:
    """End this process within ``POLL_S`` seconds of ``parent_pid``'s death (idempotent per process)."""
    if parent_pid == os.getpid() or parent_pid in _watching:
        return
    _watching.append(parent_pid)
    direct_child = os.getppid() == parent_pid

    def watch() -> None:
        while True:
            # a direct child is re-parented when its parent dies: that is exact even if the pid is reused
            gone = os.getppid() != parent_pid if direct_child else not _alive(parent_pid)
            if gone:
                os._exit(70)
            time.sleep(POLL_S)

    threading.Thread(target=watch, name="flowprep-parent-watch", daemon=True).start()


def ignore_interrupts() -> None:
    """In a worker: Ctrl-C (SIGINT to the whole foreground group) is the main process's to handle;
    it stops the run and its workers, which must not each print a KeyboardInterrupt traceback."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to do here
        pass


def run_watched(parent_pid: int, target: str, *args: object) -> None:
    """A spawned process's target: watch ``parent_pid`` first, then import and call ``target``
    ("module:function").  A spawned child unpickles its target (importing its module: numpy, zarr,
    seconds on a busy node) before it runs; naming the target by string keeps that window to this
    small module's import, so a child started just before the parent's death ends too."""
    watch_parent(parent_pid)
    ignore_interrupts()
    import importlib

    module, name = target.split(":")
    getattr(importlib.import_module(module), name)(*args)


def manager(parent_pid: int):
    """A started multiprocessing Manager whose server process also watches ``parent_pid``."""
    from multiprocessing.managers import SyncManager

    m = SyncManager()
    m.start(initializer=watch_parent, initargs=(parent_pid,))
    return m


class WorkerDied(RuntimeError):
    """A run's worker process died (kill -9, the OOM killer): the run stops with this one line;
    what it had not committed is redone by the next run."""
