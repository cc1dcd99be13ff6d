"""Where a QEMU process's memory goes: its mappings from /proc/PID/smaps sorted into kinds, and
the page cache its guest-RAM file holds (mapped by QEMU or not).

Kinds (kiB of resident memory):

* ``tb``: TCG's translation buffer (the one anonymous mapping that is writable and executable);
* ``heap``: the main malloc heap (``[heap]``);
* ``arenas``: glibc's per-thread malloc arenas (anonymous, reserved without swap: ``nr``);
* ``stacks``: thread stacks (the anonymous mappings a thread's stack pointer lies in);
* ``anon_other``: every other private anonymous mapping (large allocations malloc mapped on
  their own, such as TCG's TLBs; coroutine stacks);
* ``ram_mapped``: the guest-RAM file's pages QEMU has mapped;
* ``files``: other file mappings (QEMU's binary, libraries, the kernel and initrd): shared by
  every QEMU on the host, not a cost per VM.

``ram_cached``: the pages of the guest-RAM file in the host's page cache, mapped or not
(``cachestat``, else ``mincore``). With one RAM file per VM, these are that VM's own.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
KINDS = ("tb", "heap", "arenas", "stacks", "anon_other", "ram_mapped", "files")
_SYS_CACHESTAT = 451  # x86_64 and arm64 (Linux >= 6.5)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


_libc = ctypes.CDLL(None, use_errno=True)


def cached_pages(path: str | os.PathLike[str]) -> int:
    """Pages of ``path`` in the page cache (0 if it cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        cs, rg = _Cachestat(), _CachestatRange(0, 0)
        if _libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rg), ctypes.byref(cs), 0) == 0:
            return int(cs.nr_cache)
        return _mincore_pages(fd)
    finally:
        os.close(fd)


def _mincore_pages(fd: int) -> int:
    """Without cachestat: mincore of a mapping of the file that is never touched."""
    size = os.fstat(fd).st_size
    if not size:
        return 0
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int, ctypes.c_long]
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return 0
    try:
        vec = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
        if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            return 0
        return sum(v & 1 for v in vec)
    finally:
        _libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))


def _thread_sps(pid: int) -> list[int]:
    """The stack pointer of each of ``pid``'s threads (from /proc/PID/task/TID/syscall)."""
    sps: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return sps
    for t in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{t}/syscall").read_text().split()
        except OSError:
            continue
        if len(fields) >= 3 and fields[0] != "running":
            sps.append(int(fields[-2], 16))
    return sps


def _mappings(text: str) -> list[tuple[int, int, str, str, str, dict[str, int]]]:
    """(start, end, perms, name, vmflags, kB fields) of each mapping in a smaps text."""
    maps: list[tuple[int, int, str, str, str, dict[str, int]]] = []
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:
            a, b = head[0].split("-")
            maps.append((int(a, 16), int(b, 16), head[1],
                         head[5].strip() if len(head) > 5 else "", "", {}))
        elif maps and line.startswith("VmFlags:"):
            s, e, perms, name, _, fields = maps[-1]
            maps[-1] = (s, e, perms, name, line[8:].strip(), fields)
        elif maps and len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
            maps[-1][5][head[0][:-1]] = int(head[1])
    return maps


def breakdown(pid: int, ram_path: str | None = None) -> dict[str, int]:
    """kiB per kind (``KINDS``) of process ``pid``, plus ``anon_total``, ``anon_huge`` (of it in
    transparent huge pages) and ``ram_cached`` when ``ram_path`` is given. Empty if the process
    is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return {}
    sps = _thread_sps(pid)
    out = dict.fromkeys(KINDS, 0)
    out["anon_total"] = out["anon_huge"] = 0
    for start, end, perms, name, flags, f in _mappings(text):
        rss, anon = f.get("Rss", 0), f.get("Anonymous", 0)
        out["anon_total"] += anon
        out["anon_huge"] += f.get("AnonHugePages", 0)
        if ram_path is not None and name == ram_path:
            out["ram_mapped"] += rss
        elif name and not name.startswith("["):
            out["files"] += rss - anon
            out["anon_other"] += anon  # a library's written data pages
        elif name == "[heap]":
            out["heap"] += rss
        elif name == "[stack]" or any(start <= sp < end for sp in sps):
            out["stacks"] += rss
        elif "w" in perms and "x" in perms:
            out["tb"] += rss
        elif "nr" in flags.split():
            out["arenas"] += rss
        else:
            out["anon_other"] += anon
    if ram_path is not None:
        out["ram_cached"] = cached_pages(ram_path) * PAGE // 1024
    return out


def ram_path_of(pid: int) -> str | None:
    """The mem-path of a QEMU's memory-backend-file, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for a in argv:
        if a.startswith(b"memory-backend-file,"):
            for part in a.decode().split(","):
                if part.startswith("mem-path="):
                    return part[len("mem-path="):]
    return None
