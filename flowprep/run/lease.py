"""Leases: which live process owns a task tag's work in a store's run folder.

A lease is one small JSON file per task tag (``flowprep.run.state.lease_path``) holding
``host``, ``pid``, ``proc_start`` (the process's start time, so a reused pid is not mistaken for
the owner), ``started``, ``heartbeat`` and a random ``token``.  A background thread rewrites the
heartbeat every ``HEARTBEAT_S`` seconds.  Plain files and ``rename`` only, so it works on the
shared (NFS, Lustre, GPFS) file system that SLURM tasks on many nodes see.

A lease is **stale** when its process is gone (same host: the pid is not running, or runs a
different process) or, from another host, when its heartbeat is older than ``STALE_AFTER_S``
(a node that died or lost the file system).  Only a stale lease may be taken over; a live one
makes ``acquire`` raise ``LeaseHeld`` with a one-line message.

Why the owner re-reads its own lease before each commit (``Lease.check``): taking over a stale
lease is a rename followed by an exclusive create, and two processes that both found the same
stale lease could in a narrow window both believe they won.  Whoever's token is not in the file
has lost and must stop; the heartbeat thread notices within one period and ``check`` at once.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flowprep.atomic import write_json

HEARTBEAT_S = 10.0
# Three missed heartbeats and a few seconds of clock skew between nodes.
STALE_AFTER_S = 60.0


class LeaseHeld(RuntimeError):
    """Another live process owns this task tag; the message says which and what to do."""


class LeaseLost(RuntimeError):
    """This process's lease was taken over (it was judged dead); it must stop writing."""


def _proc_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, proc_start: str | None = None) -> bool:
    """Is ``pid`` running on this host (and, when ``proc_start`` is known, the same process)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if proc_start is not None:
        now = _proc_start(pid)
        if now is not None and now != proc_start:
            return False  # the pid was reused by another process
    return True


def read_lease(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_stale(info: dict[str, Any], now: float | None = None, stale_after: float = STALE_AFTER_S) -> bool:
    now = time.time() if now is None else now
    if info.get("host") == socket.gethostname():
        pid = info.get("pid")
        return not (isinstance(pid, int) and pid > 0 and pid_alive(pid, info.get("proc_start")))
    return now - float(info.get("heartbeat", 0)) > stale_after


def describe(info: dict[str, Any]) -> str:
    age = time.time() - float(info.get("heartbeat", 0))
    return f"pid {info.get('pid')} on {info.get('host')} (started {info.get('started_iso', '?')}, heartbeat {age:.0f} s ago)"


def live_owner(path: Path, stale_after: float = STALE_AFTER_S) -> dict[str, Any] | None:
    """The lease at ``path`` if a live process holds it, else None (absent or stale).

    An unreadable lease (0 bytes or cut JSON, as a full disk leaves it) is stale: a lease
    appears complete or not at all (``Lease._create`` links a fully written file into place), and
    its heartbeat is rewritten by rename."""
    info = read_lease(path)
    if not isinstance(info, dict):
        return None
    return None if is_stale(info, stale_after=stale_after) else info


class Lease:
    """Hold the lease at ``path`` for the life of a run: ``with Lease(path, what).acquire(): ...``."""

    def __init__(
        self,
        path: Path,
        what: str,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after: float = STALE_AFTER_S,
        extra: dict[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.what = what  # for messages: "store out/demo.zarr, task local"
        self.heartbeat_s = heartbeat_s
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        now = time.time()
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "proc_start": _proc_start(os.getpid()),
            "started": now,
            "started_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "heartbeat": now,
            "token": self.token,
            **(extra or {}),  # e.g. the run's settings digest (flowprep.run.state.acquire_lease)
        }

    def acquire(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.stale_after + 2 * self.heartbeat_s
        takeovers = 0
        while takeovers < 5 and time.monotonic() < deadline:
            if not self._create():
                owner = live_owner(self.path, self.stale_after)
                if owner is not None and self._missing_beats(owner):
                    # another node's run stopped beating (a preempted, requeued SLURM task, say):
                    # wait for its lease to go stale instead of failing the requeued task
                    time.sleep(min(self.heartbeat_s / 2, 5.0))
                    continue
                if owner is not None:
                    raise LeaseHeld(
                        f"{self.what} is being written by a live run ({describe(owner)}); wait for it to end, "
                        f"or use another --out (if that process is truly gone, delete {self.path})"
                    ) from None
                # stale: move it aside (only one contender's rename finds it), then create ours
                takeovers += 1
                aside = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.stale")
                try:
                    os.rename(self.path, aside)
                    os.unlink(aside)
                except FileNotFoundError:
                    pass
                continue
            break
        else:
            raise LeaseHeld(f"{self.what}: could not take the lease {self.path} (contended); try again")
        self._thread = threading.Thread(target=self._beat, name="flowprep-lease", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> bool:
        """Create the lease file with its content in one step (False: a lease is there).

        The content is written to a private file first and hard-linked to the lease path (link
        fails if the path exists, also on NFS), so nobody ever reads a half-written lease; where
        the file system has no hard links, an exclusive create and a write."""
        tmp = self.path.with_name(f".{self.path.name}.{self.token[:8]}.new")
        try:
            tmp.write_text(json.dumps(self.info))  # a full disk raises here and leaves no private file
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links here (some FUSE / SMB mounts)
                pass
        finally:
            tmp.unlink(missing_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
        except BaseException:
            os.unlink(self.path)  # ours, and never complete: no lease at all rather than a torn one
            raise
        return True

    def _missing_beats(self, owner: dict[str, Any]) -> bool:
        """The owner is on another host and has missed two heartbeats (it may be dead)."""
        if owner.get("host") in (socket.gethostname(), "?"):
            return False
        return time.time() - float(owner.get("heartbeat", 0)) > 2 * self.heartbeat_s

    def _write(self) -> None:
        self.info["heartbeat"] = time.time()
        write_json(self.path, self.info)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._still_ours():
                self.lost = True
                return
            try:
                self._write()
            except OSError:
                pass  # a file-system hiccup: the next beat tries again

    def _still_ours(self) -> bool:
        info = read_lease(self.path)
        return info is not None and info.get("token") == self.token

    def check(self) -> None:
        """Raise LeaseLost unless this process still holds the lease (called before each commit)."""
        if self.lost or not self._still_ours():
            self.lost = True
            raise LeaseLost(f"{self.what}: this run's lease {self.path} was taken over by another run; stopping")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._still_ours():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
