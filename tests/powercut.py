"""A real filesystem whose state after a power cut can be taken at any moment.

An ext4 filesystem on a loop device whose image lives in RAM (``/dev/shm``). Dirty pages of the files on it
stay in the page cache until something forces them to the "device" (an fsync, a journal commit, writeback
after ``vm.dirty_expire_centisecs``, 30 s by default), exactly as on a disk. :meth:`PowerCutDisk.cut` copies
the image as it is at that moment, which is what the disk would hold if power failed then, discards the
running filesystem with its page cache, and mounts the copy in its place: the kernel replays the journal as
it would at boot. Nothing is simulated above the block device: the filesystem, its journal, its ordering
and forwardd's own fsync calls are all real.

Needs root (mount, losetup) and a free loop device. Whoever writes to the filesystem must be idle (a killed
process reaped, no write in flight) when :meth:`cut` runs, or the copy could mix before and after a write;
files may still be open (they then belong to the discarded filesystem).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PowerCutDisk"]

#: Big enough for the tests' backlogs; sparse, so it costs only what is written.
IMAGE_SIZE = 512 << 20


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}; the power-cut tests need root, "
            "losetup and a free loop device"
        )
    return r.stdout.strip()


class PowerCutDisk:
    """An ext4 filesystem mounted at ``mount`` (see the module docstring)."""

    def __init__(self, mount: Path, size: int = IMAGE_SIZE) -> None:
        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._images = Path(tempfile.mkdtemp(prefix="forwardd-powercut-", dir=root))
        self.image = self._images / "disk.img"
        self.mount = mount
        self.mount.mkdir(parents=True, exist_ok=True)
        self.cuts = 0
        with open(self.image, "wb") as f:
            f.truncate(size)
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image))
        self._device: str | None = None
        self._attach()

    def _attach(self) -> None:
        self._device = _run("losetup", "--find", "--show", str(self.image))
        try:
            _run("mount", "-t", "ext4", self._device, str(self.mount))
        except BaseException:
            _run("losetup", "--detach", self._device)
            self._device = None
            raise

    def _detach(self) -> None:
        if self._device is None:
            return
        # Lazily: a process that crashed "with the power" may still hold files open (an in-process
        # queue); the old filesystem lives on, detached, until they are closed, and never reaches the copy.
        _run("umount", "--lazy", str(self.mount))
        _run("losetup", "--detach", self._device)
        self._device = None

    def cut(self) -> None:
        """Power off now and boot again: the filesystem is what the device held at this moment."""
        snapshot = self._images / "snapshot.img"
        # The device as it is now, before unmounting flushes anything; holes stay holes.
        _run("cp", "--sparse=always", str(self.image), str(snapshot))
        self._detach()
        os.replace(snapshot, self.image)
        self._attach()  # journal replay, as at boot
        self.cuts += 1

    def close(self) -> None:
        try:
            self._detach()
        finally:
            shutil.rmtree(self._images, ignore_errors=True)
