"""The host's TSC rate, which a TCG guest must be told at boot.

Under TCG the guest's TSC is the host's own (QEMU reads it with ``rdtsc``, counting only while the
VM runs), so the guest's clock keeps time only if its kernel believes the host's rate. The kernel
cannot be left to calibrate it: against the PIT that sometimes hangs on a loaded host (docs/vmm.md),
so vers passes ``tsc_early_khz``. A guest told 2 GHz on a 2.44 GHz host ran 22% fast (2.3 s ahead
10 s after a restore).

The rate is measured here, against ``CLOCK_MONOTONIC`` (the clock the guest is set from), by calling
a 10-byte ``rdtsc`` routine through ctypes, and cached per host boot in the vers cache directory.
Where executable memory cannot be mapped, the rate comes from the first ``cpu MHz`` of
/proc/cpuinfo, and failing that it is 2 GHz.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import statistics
import time
from pathlib import Path

FALLBACK_KHZ = 2_000_000
#: rdtsc; shl rdx, 32; or rax, rdx; ret
_RDTSC = bytes.fromhex("0f31" "48c1e220" "4809d0" "c3")
_SAMPLE = 0.05


def measure_tsc_khz(samples: int = 3) -> int | None:
    """TSC ticks per millisecond of CLOCK_MONOTONIC (the median of ``samples`` 50 ms windows);
    None where x86 code cannot be run from mapped memory."""
    if os.uname().machine not in ("x86_64", "amd64"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    try:
        page.write(_RDTSC)
        rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(
            ctypes.addressof(ctypes.c_char.from_buffer(page)))
        def stamp() -> tuple[float, int, int]:
            """(TSC at the clock read, the clock, the TSC ticks around the read); the tightest
            of a few tries, so a preemption between the reads does not skew the rate."""
            best: tuple[float, int, int] | None = None
            for _ in range(5):
                a, t, b = rdtsc(), time.monotonic_ns(), rdtsc()
                if best is None or b - a < best[2]:
                    best = ((a + b) / 2, t, b - a)
            assert best is not None
            return best

        rates = []
        for _ in range(samples):
            c0, t0, _ = stamp()
            time.sleep(_SAMPLE)
            c1, t1, _ = stamp()
            rates.append((c1 - c0) * 1_000_000 / (t1 - t0))
        return round(statistics.median(rates))
    finally:
        try:
            page.close()
        except BufferError:  # a ctypes view still refers to it: it goes with the process
            pass


def cpuinfo_khz() -> int | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return round(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def host_tsc_khz(cache_dir: Path | None = None) -> int:
    """The host's TSC rate in kHz: cached for this boot under ``cache_dir`` (the vers cache by
    default), else measured (and cached), else /proc/cpuinfo's, else 2 GHz."""
    from vers.files import make_private_dirs, vers_cache, write_private

    boot = _boot_id()
    path = (cache_dir or vers_cache()) / "host-tsc-khz"
    try:
        cached_boot, cached = path.read_text().split()
        if boot and cached_boot == boot and int(cached) > 0:
            return int(cached)
    except (OSError, ValueError):
        pass
    measured = measure_tsc_khz()
    khz = measured or cpuinfo_khz() or FALLBACK_KHZ
    if measured and boot:
        try:
            make_private_dirs(path.parent)
            write_private(path, f"{boot} {khz}\n")
        except OSError:
            pass
    return khz
