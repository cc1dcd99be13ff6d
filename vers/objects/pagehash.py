"""Page IDs of an image read in large chunks, hashed on two cores.

A page's ID is blake3 over its 4 KiB (``model.hash_bytes``); an all-zero page's is ``ZERO_ID``.
One blake3 call per page costs ~3 us, most of it the call itself, and two threads of one
process do not help: each call is too short for the interpreter lock to change hands without
stalling both. So for a large image a second process hashes part of every chunk: the image is
read into shared memory (a memfd, two chunk slots), the helper is told which pages of a slot to
hash and answers with their IDs on a pipe, while this process hashes the rest of the slot and
then reads the next chunk into the other slot. The bytes a page's ID was computed from are the
bytes that get stored (both come from the same slot), whatever happens to the file meanwhile.

The helper is this file run as a script: it imports only the standard library and blake3. It
exits when its pipe closes, so it does not outlive a killed ingest; if it dies or cannot be
started, this process hashes everything itself and the IDs are the same.

This module imports nothing from vers, so that the helper starts fast.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO, Self

import blake3

PAGE = 4096
ZERO = bytes(32)
_ZERO_PAGE = bytes(PAGE)
#: pages are checked for zeros 16 at a time first (one memcmp), then one by one
GROUP = 16 * PAGE
_ZERO_GROUP = bytes(GROUP)
#: one chunk of the image: a multiple of a leaf's 256 pages (1 MiB)
CHUNK = 8 << 20
#: images smaller than this are hashed in this process alone (the helper takes ~50 ms to start)
HELPER_MIN_BYTES = 64 << 20
_REQ = struct.Struct("<QQ")  # slot offset, length; length 0 ends the helper


def page_ids(view: memoryview | bytes | bytearray) -> list[bytes]:
    """The ID of each page of ``view`` (the last may be short), ``ZERO`` for all-zero pages."""
    out: list[bytes] = []
    h = blake3.blake3
    zero_page, zero_group = _ZERO_PAGE, _ZERO_GROUP
    mv = memoryview(view)
    n = len(mv)
    offsets = range(0, GROUP, PAGE)
    for g in range(0, n, GROUP):
        grp = mv[g : g + GROUP]
        if zero_group.startswith(grp):  # a memcmp: much faster than memoryview ==
            out += [ZERO] * (-(-len(grp) // PAGE))
        elif len(grp) == GROUP:
            # startswith is a memcmp that stops at the first non-zero byte
            out += [ZERO if zero_page.startswith(pg := grp[o : o + PAGE]) else h(pg).digest()
                    for o in offsets]
        else:
            out += [ZERO if zero_page.startswith(pg := grp[o : o + PAGE]) else h(pg).digest()
                    for o in range(0, len(grp), PAGE)]
    return out


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Helper:
    """The second process and its view of the shared slots."""

    def __init__(self, fd: int) -> None:
        import subprocess  # not at the top: every command imports this module, few ingest

        self.proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__), str(fd)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            pass_fds=(fd,), bufsize=0, close_fds=True,
        )

        self.ready = False

    def poll_ready(self) -> bool | None:
        """Whether the helper has started (it says so with one byte), without waiting: until
        then this process hashes whole chunks itself. None: it died before it was ready."""
        if not self.ready:
            assert self.proc.stdout is not None
            readable, _, _ = select.select([self.proc.stdout], [], [], 0)
            if readable:
                try:
                    said = self.proc.stdout.read(1)
                except OSError:
                    said = b""
                if said != b"R":
                    return None
                self.ready = True
        return self.ready

    def ask(self, offset: int, length: int) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(_REQ.pack(offset, length))
            return True
        except OSError:
            return False

    def answer(self, pages: int) -> list[bytes] | None:
        """The IDs the helper computed for its last request, or None if it died."""
        assert self.proc.stdout is not None
        want = pages * 32
        data = bytearray()
        while len(data) < want:
            try:
                more = self.proc.stdout.read(want - len(data))
            except OSError:
                return None
            if not more:
                return None
            data += more
        return [bytes(data[i : i + 32]) for i in range(0, want, 32)]

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        import subprocess

        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a wedged helper
            self.proc.kill()
            self.proc.wait()


class ChunkHasher:
    """Reads an image chunk by chunk and gives each chunk's bytes with its page IDs.

    ``chunks`` yields ``(offset, view, ids)``; ``view`` stays valid until the next chunk after
    it has been yielded (two slots), so a caller copies out what it keeps. ``helper`` None
    decides by the image's size and the cores this process may use."""

    def __init__(self, size: int, helper: bool | None = None) -> None:
        self.size = size
        self.chunk = min(CHUNK, max(PAGE, -(-size // PAGE) * PAGE))
        if helper is None:
            helper = size >= HELPER_MIN_BYTES and cores() >= 2
        self._helper: _Helper | None = None
        self._fd = -1
        self._map: mmap.mmap | None = None
        if helper and hasattr(os, "memfd_create"):
            try:
                self._fd = os.memfd_create("vers-ingest", os.MFD_CLOEXEC)
                os.ftruncate(self._fd, 2 * self.chunk)
                self._map = mmap.mmap(self._fd, 2 * self.chunk)
                self._helper = _Helper(self._fd)
            except OSError:
                self._release()
        if self._map is None:
            self._buf: bytearray | mmap.mmap = bytearray(2 * self.chunk)
        else:
            self._buf = self._map
        #: the helper's share of each chunk, in 1/16ths, adjusted to who waits for whom
        self.share = 8
        self._chunks = 0
        self.helper_pages = 0
        self.wait_s = 0.0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a caller still holds a view; freed with it
                pass
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def wait_for_helper(self, timeout: float = 30.0) -> bool:
        """Wait until the helper has started (benchmarks and tests: an ingest never waits);
        False if there is none or it died."""
        deadline = time.monotonic() + timeout
        while self._helper is not None and time.monotonic() < deadline:
            ready = self._helper.poll_ready()
            if ready is None:
                self._lost_helper()
            elif ready:
                return True
            else:
                time.sleep(0.005)
        return False

    @property
    def parallel(self) -> bool:
        return self._helper is not None

    def _fill(self, source: BinaryIO, view: memoryview, done: int) -> int:
        got = 0
        while got < len(view):
            n = source.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                raise EOFError(done + got)
            got += n
        return got

    def chunks(self, source: BinaryIO) -> Iterator[tuple[int, memoryview, list[bytes]]]:
        """Raises ``EOFError(bytes read)`` if ``source`` ends before ``size`` bytes."""
        buf = memoryview(self._buf)
        size, chunk = self.size, self.chunk
        slot = 0
        done = 0
        want = min(chunk, size)
        if want:
            self._fill(source, buf[:want], 0)
        while done < size:
            base = slot * chunk
            view = buf[base : base + want]
            ids = self._hash(view, base, want)
            nxt = done + want
            nwant = min(chunk, size - nxt)
            if nwant:
                other = (1 - slot) * chunk
                self._fill(source, buf[other : other + nwant], nxt)
            yield done, view, ids
            done, want, slot = nxt, nwant, 1 - slot

    def _hash(self, view: memoryview, base: int, length: int) -> list[bytes]:
        helper = self._helper
        self._chunks += 1
        share = self.share
        if share == 0 and self._chunks % 8 == 0:
            share = 2  # now and then, see whether the helper got a core back
        if helper is None or length < 2 * GROUP or share == 0:
            return page_ids(view)
        ready = helper.poll_ready()
        if ready is None:
            self._lost_helper()
        if not ready:
            return page_ids(view)
        groups = length // GROUP
        split = max(1, min(groups - 1, groups * (16 - share) // 16)) * GROUP
        if not helper.ask(base + split, length - split):
            self._lost_helper()
            return page_ids(view)
        mine = page_ids(view[:split])
        t0 = time.perf_counter()
        theirs = helper.answer(-(-(length - split) // PAGE))
        waited = time.perf_counter() - t0
        self.wait_s += waited
        if theirs is None:
            self._lost_helper()
            return mine + page_ids(view[split:])
        self.helper_pages += len(theirs)
        # Waited more than a trifle: the helper has too much (on a busy machine it may get no
        # core at all, and then hashing alone is faster); else give it a little more.
        if waited > 0.0005:
            self.share = max(0, share - 1)
        else:
            self.share = min(14, share + 1)
        return mine + theirs

    def _lost_helper(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None


def _helper_main(fd: int) -> None:  # pragma: no cover - runs in the helper process
    size = os.fstat(fd).st_size
    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    view = memoryview(mm)
    rd, wr = sys.stdin.fileno(), sys.stdout.fileno()
    os.write(wr, b"R")  # ready
    while True:
        req = b""
        while len(req) < _REQ.size:
            more = os.read(rd, _REQ.size - len(req))
            if not more:
                return
            req += more
        offset, length = _REQ.unpack(req)
        if not length:
            return
        out = memoryview(b"".join(page_ids(view[offset : offset + length])))
        while out:
            out = out[os.write(wr, out) :]


if __name__ == "__main__":  # pragma: no cover - the helper
    try:
        _helper_main(int(sys.argv[1]))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
