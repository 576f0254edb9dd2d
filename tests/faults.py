"""Faults the reliability tests inject, made the same way on every OS."""

import errno
import os


class FullDisk:
    """An open file on a full disk: every write and flush fails with ENOSPC as the kernel reports it
    (what /dev/full does on Linux), and closing it succeeds."""

    def write(self, _data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        pass
