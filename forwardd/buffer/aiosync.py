"""fdatasync without blocking the event loop or waking a Python thread: Linux AIO (``IOCB_CMD_FDSYNC``).

Why: a commit under ``fsync: always`` costs one fdatasync (0.15-0.4 ms here). Done on the loop thread it
stops every connection for that long; done on a Python thread it costs a GIL hand-off each way (0.3-0.5 ms
on a busy 2-core machine, see :mod:`forwardd.buffer.queue`). Linux (4.18 and later) runs an AIO fdatasync
in a kernel worker and signals an eventfd when it is done: the loop reads sockets and writes acks while the
disk syncs, and learns of the end in its next poll, with no thread of ours involved. The data is as durable
as after ``os.fdatasync``: the kernel calls the same ``vfs_fsync(file, datasync=1)``.

Where the kernel refuses (an old kernel, a seccomp profile without ``io_setup``), :meth:`AioSync.open`
returns None and the queue syncs as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys

__all__ = ["AioSync"]

_NR_IO_SETUP, _NR_IO_DESTROY, _NR_IO_GETEVENTS, _NR_IO_SUBMIT = 206, 207, 208, 209  # x86_64
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
#: In-flight syncs per queue: one commit at a time, plus the segment a roll leaves behind.
_MAX_EVENTS = 8


class _IOCB(ctypes.Structure):
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


_libc: ctypes.CDLL | None = None


def _syscall() -> ctypes._NamedFuncPointer | None:
    global _libc
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc.syscall


class AioSync:
    """One AIO context and eventfd, bound to the running loop; :meth:`fdatasync` returns a future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: int, efd: int) -> None:
        self._loop = loop
        self._ctx = ctx
        self._efd = efd
        self._next = 1
        #: In flight: request id -> (its future, its control block, which must live until it completes).
        self._inflight: dict[int, tuple[asyncio.Future[None], _IOCB]] = {}
        self._events = (_Event * _MAX_EVENTS)()
        self._zero = _Timespec(0, 0)
        self._closed = False
        loop.add_reader(efd, self._ready)

    @classmethod
    def open(cls, loop: asyncio.AbstractEventLoop) -> AioSync | None:
        """A syncer for ``loop``, or None where the kernel does not offer AIO fdatasync."""
        syscall = _syscall()
        if syscall is None or os.environ.get("FORWARDD_NO_AIO_SYNC"):
            return None
        ctx = ctypes.c_ulong(0)
        if syscall(_NR_IO_SETUP, _MAX_EVENTS, ctypes.byref(ctx)) != 0:
            return None
        try:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            syscall(_NR_IO_DESTROY, ctx)
            return None
        return cls(loop, ctx.value, efd)

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        """Start an fdatasync of ``fd``; the future resolves when it is done (OSError if it failed)."""
        fut: asyncio.Future[None] = self._loop.create_future()
        syscall = _syscall()
        if self._closed or syscall is None or len(self._inflight) >= _MAX_EVENTS:
            fut.set_exception(OSError(11, "AIO sync not available"))
            return fut
        rid = self._next
        self._next += 1
        cb = _IOCB()
        cb.aio_data = rid
        cb.aio_lio_opcode = _IOCB_CMD_FDSYNC
        cb.aio_fildes = fd
        cb.aio_flags = _IOCB_FLAG_RESFD
        cb.aio_resfd = self._efd
        ptrs = (ctypes.POINTER(_IOCB) * 1)(ctypes.pointer(cb))
        if syscall(_NR_IO_SUBMIT, ctypes.c_ulong(self._ctx), 1, ptrs) != 1:
            err = ctypes.get_errno()
            fut.set_exception(OSError(err, f"io_submit: {os.strerror(err)}"))
            return fut
        self._inflight[rid] = (fut, cb)
        return fut

    def _ready(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        syscall = _syscall()
        assert syscall is not None
        events = self._events
        while self._inflight:
            n = syscall(
                _NR_IO_GETEVENTS,
                ctypes.c_ulong(self._ctx),
                0,
                _MAX_EVENTS,
                events,
                ctypes.byref(self._zero),
            )
            if n <= 0:
                return
            for i in range(n):
                ev = events[i]
                item = self._inflight.pop(ev.data, None)
                if item is None or item[0].done():
                    continue
                if ev.res < 0:
                    item[0].set_exception(OSError(-ev.res, os.strerror(-ev.res)))
                else:
                    item[0].set_result(None)

    def close(self) -> None:
        """Release the context (after the last sync completed: the queue awaits its commits first)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._efd)
        syscall = _syscall()
        if syscall is not None:
            syscall(_NR_IO_DESTROY, ctypes.c_ulong(self._ctx))  # waits for any in-flight request
        os.close(self._efd)
        for fut, _ in self._inflight.values():
            if not fut.done():
                fut.set_exception(OSError(5, "AIO context closed"))
        self._inflight.clear()
