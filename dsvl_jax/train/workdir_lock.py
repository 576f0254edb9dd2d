"""One run per workdir: a lock file that the run holds from set-up to exit (process 0 of a multi-host run).

Two runs on one workdir delete each other's in-flight checkpoints, so a second run refuses to start with
one line naming the holder. The lock is a plain file, not flock (flock is unreliable or absent on the NFS
and GCSFuse mounts pods share), so staleness is judged from what the file says:

  WORKDIR/run.lock   JSON, padded to LOCK_BYTES: host, pid, boot_id, pid_start (the holder's start time
                     in clock ticks, /proc/<pid>/stat), started (UTC), started_s, heartbeat_s (epoch s),
                     beats (heartbeat counter), token (unique per acquisition)

- created atomically: the record is written under a unique name and os.link'ed to run.lock (fails when
  it exists; the NFS-safe way, a lost reply is checked by the link count), or, where the filesystem has
  no hard links (GCSFuse), opened with O_CREAT|O_EXCL;
- heartbeat: a daemon thread rewrites the record in place every DSVL_LOCK_HEARTBEAT_S (30 s), after
  checking the file still carries its token (a lock taken over is never overwritten: it logs an error);
- stale when its heartbeat (the record's or the file's mtime, whichever is newer) is older than
  DSVL_LOCK_STALE_S (600 s), or when the holder is on this host (same host name and boot id) and its pid
  is gone (no such process, a zombie, or another process that reused the pid); a stale lock is taken
  over with a warning: renamed aside (one taker wins), checked to be the very record judged stale
  (else put back), then created anew;
- released (deleted, when it still carries the token) on normal exit and on errors; a process killed
  with -9 leaves it behind, and the next run takes it over (pid gone, or after the heartbeat timeout
  when that run is on another host).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid

from dsvl_jax.errors import Error

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
LOCK_BYTES = 1024
STALE_ENV, HEARTBEAT_ENV = "DSVL_LOCK_STALE_S", "DSVL_LOCK_HEARTBEAT_S"
DEFAULT_STALE_S, DEFAULT_HEARTBEAT_S = 600.0, 30.0


class WorkdirLocked(Error):
    """Another run holds the workdir's lock (exit 1); the message names it and how to proceed."""


def stale_after_s() -> float:
    return float(os.environ.get(STALE_ENV, DEFAULT_STALE_S))


def heartbeat_every_s() -> float:
    return float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))


@dataclasses.dataclass
class _Seen:
    """The lock file as read: its bytes (what a take-over compares), the record (None: unparseable)."""

    raw: bytes
    record: dict | None
    mtime: float

    def heartbeat(self) -> float:
        beat = (self.record or {}).get("heartbeat_s", 0.0)
        return max(float(beat) if isinstance(beat, (int, float)) else 0.0, self.mtime)


class WorkdirLock:
    """A held lock: `release()` (idempotent, thread-safe) ends the heartbeat and deletes the file."""

    def __init__(self, path: str, record: dict, heartbeat_s: float):
        self.path, self.record = path, record
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._released = False
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name="workdir-lock-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._mutex:
                if self._released:
                    return
                try:
                    if not self._still_mine():
                        return
                    self.record["beats"] += 1
                    self.record["heartbeat_s"] = time.time()
                    with open(self.path, "r+b") as f:
                        f.write(_encode(self.record))
                except OSError as e:  # a filesystem hiccup: the next beat tries again
                    log.warning("workdir lock %s: heartbeat not written: %s", self.path, e)

    def _still_mine(self) -> bool:
        seen = _read(self.path)
        if seen is not None and (seen.record or {}).get("token") == self.record["token"]:
            return True
        holder = _describe(seen.record) if seen is not None and seen.record else "nobody"
        log.error(
            "workdir lock %s was taken over (now held by %s): another run may be writing this "
            "workdir; stop one of them",
            self.path,
            holder,
        )
        return False

    def release(self) -> None:
        self._stop.set()
        with self._mutex:
            if self._released:
                return
            self._released = True
            seen = _read(self.path)
            if seen is not None and (seen.record or {}).get("token") == self.record["token"]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)


def acquire(workdir: str) -> WorkdirLock:
    """Take WORKDIR/run.lock (creating the workdir), or raise WorkdirLocked naming the live holder."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    stale = stale_after_s()
    for _ in range(8):
        me = _record()
        if _create(path, _encode(me)):
            return WorkdirLock(path, me, heartbeat_every_s())
        seen = _read(path)
        if seen is None:  # released meanwhile
            continue
        why = _stale(seen, stale)
        if why is None:
            raise WorkdirLocked(_refusal(workdir, path, seen, stale))
        if _set_aside(path, seen, me["token"]):
            holder = _describe(seen.record) if seen.record else "an unreadable record"
            log.warning("workdir lock %s: taking over the stale lock of %s (%s)", path, holder, why)
    raise WorkdirLocked(
        f"workdir {workdir}: could not take {path} (other runs are starting on this workdir at the "
        "same time); start one run per workdir"
    )


# -- the file ---------------------------------------------------------------------------------


def _record() -> dict:
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": _boot_id(),
        "pid_start": _proc_start(os.getpid()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "started_s": now,
        "heartbeat_s": now,
        "beats": 0,
        "token": uuid.uuid4().hex,
    }


def _encode(record: dict) -> bytes:
    """Fixed-size (in-place heartbeats overwrite the same bytes): JSON, space-padded."""
    data = json.dumps(record).encode()
    return data + b" " * (LOCK_BYTES - 1 - len(data)) + b"\n"


def _create(path: str, data: bytes) -> bool:
    """Create `path` holding `data` atomically; False when it exists."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if (
            os.path.exists(tmp) and os.stat(tmp).st_nlink == 2
        ):  # NFS: the reply was lost, not the link
            return True
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
            raise
        return _create_exclusive(path, data)  # no hard links here (GCSFuse)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_exclusive(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def _read(path: str) -> _Seen | None:
    """The lock file (None: there is none); a record still being written is re-read a few times."""
    for attempt in range(3):
        try:
            with open(path, "rb") as f:
                raw = f.read()
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
            if isinstance(record, dict):
                return _Seen(raw, record, mtime)
        except ValueError:
            pass
        if attempt < 2:
            time.sleep(0.1)
    return _Seen(raw, None, mtime)


def _set_aside(path: str, seen: _Seen, token: str) -> bool:
    """Move the stale lock out of the way; True when the file moved is the one judged stale."""
    aside = f"{path}.stale.{token}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = _read(aside)
    if moved is not None and moved.raw == seen.raw:
        os.unlink(aside)
        return True
    # it changed between the read and the rename (a heartbeat, or another run's take-over): put it back
    try:
        os.link(aside, path)
    except OSError:
        if not os.path.exists(path):
            os.rename(aside, path)
    if os.path.exists(aside):
        os.unlink(aside)
    return False


# -- staleness --------------------------------------------------------------------------------


def _stale(seen: _Seen, stale_s: float) -> str | None:
    """Why the lock is stale, or None when its holder may be alive."""
    age = time.time() - seen.heartbeat()
    if age > stale_s:
        return f"last heartbeat {age:.0f} s ago > {stale_s:.0f} s ({STALE_ENV})"
    r = seen.record or {}
    if r.get("host") != socket.gethostname() or not isinstance(r.get("pid"), int):
        return None
    boot = _boot_id()
    if r.get("boot_id") and boot and r["boot_id"] != boot:
        return f"its host {r['host']} has rebooted since"
    if not _alive(r["pid"], r.get("pid_start")):
        return f"pid {r['pid']} is gone on this host"
    return None


def _alive(pid: int, started: int | None) -> bool:
    proc = f"/proc/{pid}/stat"
    if os.path.isdir("/proc/self"):
        try:
            with open(proc) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        if fields[0] == "Z":  # a zombie: dead, not yet reaped
            return False
        return started is None or int(fields[19]) == started  # else another process has the pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _proc_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _describe(r: dict) -> str:
    return f"host {r.get('host', '?')}, pid {r.get('pid', '?')}, since {r.get('started', '?')}"


def _refusal(workdir: str, path: str, seen: _Seen, stale_s: float) -> str:
    r = seen.record or {}
    holder = _describe(r) if r else "a run whose lock record is unreadable"
    age = time.time() - seen.heartbeat()
    return (
        f"workdir {workdir} is in use by another run ({holder}; heartbeat {age:.0f} s ago): "
        "wait for it to end or stop it, or train in another --workdir; a lock whose heartbeat is "
        f"older than {stale_s:.0f} s ({STALE_ENV}) or whose pid is gone on its host is taken over "
        f"by the next run; if that run is certainly dead, delete {path}"
    )
