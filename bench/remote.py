"""Remote benchmark, against a real S3 server (SeaweedFS) on loopback.

1. Incremental push: after pushing a 1 GiB memory image, a commit with 1% of its pages changed is
   pushed; the bucket's growth (sum of object sizes from a listing) is compared with the changed
   bytes. Goal: <= 1.1x.
2. Clone throughput: `vers clone` of that two-commit history, beside a plain boto3 copy of the same
   objects (aws-s3-sync style: list, then GET every object with 10 threads into files) as the
   baseline. Goal: >= 100 MB/s.

3. Lazy restore (``--mode lazy``): a VM commit is pushed, then restored from S3 into a fresh
   repository (``run-commit --from``) until the guest answers exec, against a restore of the same
   commit from the local store (goal <= 2x) and a full clone + restore; the bytes fetched (what the
   fresh store holds afterwards) against the commit's non-zero bytes (goal <= 10%); then the guest
   reads a file of ``--read-mib`` from its disk sequentially (O_DIRECT, so every block comes
   through the lazily served disk), against a plain boto3 copy of the bucket (goal >= 50%). The
   host's kept kernels and initrds (vers.bootcache) are emptied first: the first lazy restore
   fetches them, as on a host that never restored this guest, and the later ones take them from
   there. Which touched-page record each lazy restore prefetched is printed (own, an ancestor's,
   none): the pushed commit has none at first; a commit made in a VM restored from it (its child,
   pushed later) is restored lazily too, borrowing its parent's. Two floors of that read are
   measured in the same run, in a locally restored guest: its disk served from the local store by
   the same daemon, then again from the host's page cache (QEMU and the guest alone). The lazy
   read's FUSE requests (count, size, how many waited for the remote and how long) and the range
   GETs behind them are printed; the time the restore spends before QEMU starts (commit, trees,
   nodes, boot files) too. Defaults run in a few minutes; larger sizes are ``--memory 2G --read-mib
   256`` (with a guest image whose disk holds 256 MiB).

    python3 bench/remote.py [--size-mib 1024]
    python3 bench/remote.py --mode lazy [--memory 512M --read-mib 128 --repeat 3]
    python3 bench/remote.py --mode no-record [--repeat 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vers import bootcache
from vers.objects.imagetree import TreeReader
from vers.objects.model import PAGE_SIZE, ZERO_ID
from vers.porcelain import vm as verbs
from vers.porcelain.clone import clone
from vers.porcelain.push import push
from vers.porcelain.remote import add_remote
from vers.remote.backends import open_transport
from vers.remote.lazy import LazyObjects
from vers.repo import Repo
from vers.testing.s3server import SeaweedS3
from vers.vmm import boot
from vers.vmm.agent import guest_exec
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.memory import FuseMemoryBacking, load_backing
from vers.vmm.memory.fuse import DISK_BASE_PREFIX, BackingDaemon, BackingFile

BUCKET = "vers-bench"
T = TypeVar("T")
MB = 1e6


def make_image(path: Path, size: int, seed: int) -> None:
    """Half random pages, half zero (a guest that has touched half its RAM)."""
    rnd = random.Random(seed)
    block = 256 * PAGE_SIZE
    with open(path, "wb") as f:
        for _ in range(size // block):
            buf = bytearray(block)
            for i in range(256):
                if rnd.random() < 0.5:
                    buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = os.urandom(PAGE_SIZE)
            f.write(buf)


def change_one_percent(src: Path, dst: Path, seed: int) -> int:
    shutil.copyfile(src, dst)
    npages = src.stat().st_size // PAGE_SIZE
    pages = random.Random(seed).sample(range(npages), npages // 100)
    with open(dst, "r+b") as f:
        for p in pages:
            f.seek(p * PAGE_SIZE)
            f.write(os.urandom(PAGE_SIZE))
    return len(pages) * PAGE_SIZE


def bucket_bytes(url: str) -> int:
    return sum(open_transport(url).list("").values())


def plain_copy(server: SeaweedS3, prefix: str, dest: Path) -> tuple[int, float]:
    """The baseline: what `aws s3 sync s3://bucket/prefix dest` does, with boto3 (10 threads)."""
    client = server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        # not the transient lock objects: a writer may delete one between our listing and GET
        keys += [o["Key"] for o in page.get("Contents", [])
                 if not o["Key"].startswith(f"{prefix}locks/")]
    t0 = time.perf_counter()

    def get(key: str) -> int:
        out = dest / key
        out.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(out))
        return out.stat().st_size

    with ThreadPoolExecutor(10) as pool:
        total = sum(pool.map(get, keys))
    return total, time.perf_counter() - t0


def percentile(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, round(q * (len(ys) - 1)))]


def nonzero_bytes(repo: Repo, cid: str) -> int:
    commit = repo.get_commit(cid)
    total = 0
    for tree_hex in commit.images.values():
        tree = repo.store.get_tree(bytes.fromhex(tree_hex))
        if tree.num_pages:
            ids = TreeReader(repo.store, tree).page_ids(0, tree.num_pages - 1)
            total += sum(PAGE_SIZE for i in ids if i != ZERO_ID)
    return total


FROM_REMOTE: list[float] = []
# Seconds of each step of the restore being timed: {step: seconds}, filled by the wrappers below.
STEPS: dict[str, float] = {}
STEP_NAMES = [("from_remote", "commit, trees, boot files from the remote (before QEMU)"),
              ("boot files", "kernel and initrd to files"), ("disk bases", "disk bases"),
              ("qemu", "QEMU started, QMP connected"),
              ("device state", "device state loaded (first RAM faults)"),
              ("freshen", "guest running: clock, entropy, generation (RAM faults)"),
              ("exec", "first exec answered")]


def _timed(label: str, fn: Callable[..., T]) -> Callable[..., T]:
    def timed(*args: object, **kwargs: object) -> T:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            STEPS[label] = STEPS.get(label, 0.0) + time.perf_counter() - t0
    return timed


def _timed_from_remote(repo: Repo, remote: str, rev: str) -> str:
    t0 = time.perf_counter()
    try:
        return _from_remote(repo, remote, rev)
    finally:
        FROM_REMOTE.append(time.perf_counter() - t0)
        STEPS["from_remote"] = FROM_REMOTE[-1]


_from_remote, verbs.from_remote = verbs.from_remote, _timed_from_remote
boot._boot_file = _timed("boot files", boot._boot_file)
boot._commit_disk_base = _timed("disk bases", boot._commit_disk_base)
boot.Machine.start = _timed("qemu", boot.Machine.start)  # type: ignore[method-assign]
boot.Machine.connect = _timed("qemu", boot.Machine.connect)  # type: ignore[method-assign]
boot.finish_restore = _timed("device state", boot.finish_restore)
boot.freshen = _timed("freshen", boot.freshen)


def restored_and_answering(repo: Repo, cid: str, remote: str | None,
                           steps: list[dict[str, float]] | None = None) -> tuple[float, str]:
    """Seconds from the restore call until the guest answers exec; the VM's ID. ``steps``
    gets how long each step took (``STEP_NAMES``)."""
    STEPS.clear()
    t0 = time.perf_counter()
    rec = verbs.run_commit(repo, cid, remote=remote)
    t1 = time.perf_counter()
    res = guest_exec(rec.runtime.agent_sock, "true", 120)
    assert res.returncode == 0, res
    t2 = time.perf_counter()
    STEPS["exec"] = t2 - t1
    lazy = repo.store.absent
    if isinstance(lazy, LazyObjects):
        STEPS["remote indexes"] = sum(p.index_seconds for p in lazy.promisors)
        STEPS.update({f"{k}": v for k, v in lazy.phases.items()})
    if steps is not None:
        steps.append(dict(STEPS))
    return t2 - t0, rec.id


def print_steps(label: str, steps: list[dict[str, float]]) -> None:
    """p50 of each step of a kind of restore, in the order they run."""
    if not steps:
        return
    order = [n for n, _ in STEP_NAMES]
    keys = [k for k in dict.fromkeys(k for st in steps for k in st)]
    main = sorted((k for k in keys if k in order), key=order.index)
    sub = [k for k in keys if k not in order]

    def p50(k: str) -> str:
        return f"{percentile([st.get(k, 0.0) for st in steps], 0.5):.2f}"

    names = dict(STEP_NAMES)
    print(f"  {label}, p50 of each step (s): " + "; ".join(f"{names[k]} {p50(k)}" for k in main))
    if sub:
        print("    of which before QEMU: " + "; ".join(f"{k} {p50(k)}" for k in sub))


def ram_read(repo: Repo, vm: str) -> int:
    """Bytes of guest RAM the restored VM's memory file has read from its commit so far (what
    the kernel asked for: the pages the guest touched and the read-around of each fault)."""
    backing = load_backing(verbs.record(repo, vm).memory)
    return backing.stats()["base_bytes_read"] if isinstance(backing, FuseMemoryBacking) else 0


READ_SCRIPT = "dd if=/root/blob of=/dev/null bs=1M iflag=direct"


def timed_read(repo: Repo, vm: str) -> float:
    """Seconds the guest takes to read /root/blob sequentially, bypassing its page cache."""
    t0 = time.perf_counter()
    res = guest_exec(verbs.record(repo, vm).runtime.agent_sock, READ_SCRIPT, 900)
    assert res.returncode == 0, res
    return time.perf_counter() - t0


def profiled(out: str | None, label: str) -> subprocess.Popen[bytes] | None:
    """With ``--profile DIR``: py-spy sampling the backing daemon (its threads' stacks, as
    collapsed stacks in DIR/LABEL.txt) until ``stop_profile``."""
    if not out:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    pid = BackingDaemon().request("ping")["pid"]
    spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-f", "raw", "-r", "200",
                            "--nonblocking", "-o", str(Path(out) / f"{label}.txt")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return spy


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(30)


def disk_read_stats() -> dict[str, int]:
    """The read counters of the lazily served disk bases on the backing daemon, summed."""
    daemon = BackingDaemon()
    total: dict[str, int] = {}
    for name in daemon.request("list")["files"]:
        if name.startswith(DISK_BASE_PREFIX):
            for k, v in BackingFile(daemon, name, 0).stats().items():
                total[k] = total.get(k, 0) + v
    return total


def print_read_trace(before: dict[str, int], after: dict[str, int], seconds: float) -> None:
    """What the disk's FUSE reads asked for during the sequential read, and their waits."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    reads = max(1, d.get("base_reads", 0))
    waited = max(1, d.get("base_reads_waited", 0))
    print(f"  FUSE reads of the disk: {d.get('base_reads', 0)} "
          f"({d.get('base_read_pages', 0) * PAGE_SIZE / reads / 1024:.0f} KiB average, "
          f"largest {after.get('base_read_max_pages', 0) * PAGE_SIZE // 1024} KiB, "
          f"{d.get('base_reads_sequential', 0)} sequential); "
          f"{d.get('base_reads_waited', 0)} waited for the remote, "
          f"{d.get('base_reads_wait_ms', 0) / waited:.1f} ms average, "
          f"{d.get('base_reads_wait_ms', 0) / 1000:.2f} s of {seconds:.2f} s in all "
          f"({d.get('base_reads_absent_pages', 0)} pages absent when read)")
    print(f"  remote: {d.get('remote_batches', 0)} fetches, "
          f"{d.get('remote_ranges', 0)} range GETs, "
          f"{d.get('remote_objects', 0)} objects, {d.get('remote_bytes', 0) / MB:.0f} MB")


RECORD_NAMES = {0: "none", 1: "own", 2: "ancestor's"}


def ram_record(repo: Repo, vm: str) -> tuple[str, int]:
    """Which touched-page record the restore of ``vm``'s RAM prefetched (own, an ancestor's,
    none) and how many pages it named, as the backing daemon reports it."""
    backing = load_backing(verbs.record(repo, vm).memory)
    if not isinstance(backing, FuseMemoryBacking):
        return "?", 0
    st = backing.stats()
    return RECORD_NAMES.get(st.get("record_source", -1), "?"), st.get("record_pages", 0)


def lazy_restore(work: Path, label: str, cid: str, url: str, steps: list[dict[str, float]],
                 ) -> tuple[Repo, str, float, int, int, str]:
    """A lazy restore of ``cid`` into a fresh repository: (repo, VM, seconds until exec
    answers, bytes fetched, guest RAM read, which record it prefetched)."""
    fresh = Repo.init(work / label)
    secs, vm = restored_and_answering(fresh, cid, url, steps)
    source, pages = ram_record(fresh, vm)
    fetched = fresh.store.stats().bytes
    print(f"lazy restore {label} of {cid[:12]}: {secs:.2f} s, record: {source} ({pages} pages), "
          f"fetched {fetched / MB:.1f} MB, load {os.getloadavg()[0]:.1f}", flush=True)
    return fresh, vm, secs, fetched, ram_read(fresh, vm), source


def pushed_guest(args: argparse.Namespace, work: Path, url: str,
                 disk_size: str | None) -> tuple[Repo, str, int]:
    """A guest that wrote ``--read-mib`` of random data to its disk and dropped its caches,
    committed and pushed to ``url``: (its repository, the commit, the commit's non-zero
    bytes)."""
    src = Repo.init(work / "src")
    rec = run_vm(src, RunOptions(memory=verbs.parse_size(args.memory),
                                 disk_size=verbs.parse_size(disk_size) if disk_size else None))
    script = (f"dd if=/dev/urandom of=/root/blob bs=1M count={args.read_mib} 2>/dev/null && "
              "sync && echo 3 > /proc/sys/vm/drop_caches")
    assert guest_exec(rec.runtime.agent_sock, script, 600).returncode == 0
    cid, _tm = verbs.commit(src, rec.id, "bench")
    verbs.kill(src, [rec.id])
    add_remote(src, "origin", url)
    push(src, "origin")
    return src, cid, nonzero_bytes(src, cid)


def lazy_bench(args: argparse.Namespace, work: Path, server: SeaweedS3) -> None:
    url = f"s3://{BUCKET}/lazy"
    # as on a host that never restored this guest: the first lazy restore fetches the kernel and
    # initrd, and keeps them for the later ones (vers.bootcache)
    shutil.rmtree(bootcache.boot_cache(), ignore_errors=True)
    src, cid, nz = pushed_guest(args, work, url, args.disk_size)
    parents = src.get_commit(cid).parents
    print(f"commit {cid[:12]}: {args.memory} RAM, {args.disk_size or 'default'} disk, "
          f"{nz / MB:.0f} MB of non-zero pages, {len(parents)} parent(s), pushed with no "
          f"touched-page record")

    # Lazily, into fresh repositories: the first finds no record anywhere (the commit was
    # never restored), each later one the record the first one shared.
    lazy, fetched, lazy_ram, sources = [], [], [], []
    lazy_steps: list[dict[str, float]] = []
    for i in range(args.repeat):
        fresh, vm, secs, got, ram, source = lazy_restore(work, f"fresh-{i}", cid, url,
                                                         lazy_steps)
        lazy.append(secs)
        fetched.append(got)
        lazy_ram.append(ram)
        sources.append(source)
        if i < args.repeat - 1:
            verbs.kill(fresh, [vm])
            fresh.close()

    # On demand, under a sequential read in the last lazily restored guest.
    before = fresh.store.stats().bytes
    trace0 = disk_read_stats()
    spy = profiled(args.profile, "lazy-read")
    t_read = timed_read(fresh, vm)
    stop_profile(spy)
    trace1 = disk_read_stats()
    got_read = fresh.store.stats().bytes - before
    verbs.kill(fresh, [vm])
    fresh.close()

    # From the local store. The repository has a remote, so its first restore of the commit
    # records what the guest reads first (faults served in 64-page blocks meanwhile); the
    # later ones find that record and record nothing.
    local, local_ram = [], []
    local_steps: list[dict[str, float]] = []
    for i in range(args.repeat):
        secs, vm = restored_and_answering(src, cid, None, local_steps)
        local.append(secs)
        local_ram.append(ram_read(src, vm))
        print(f"local restore {i}: {secs:.2f} s{' (recording)' if i == 0 else ''}, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        if i == args.repeat - 1:
            # The floors of the sequential read: its disk served from the local store by the
            # same daemon, then (read again) from the host's page cache: QEMU and the guest alone.
            spy = profiled(args.profile, "local-read")
            t_local_read = timed_read(src, vm)
            stop_profile(spy)
            t_cached_read = timed_read(src, vm)
            # A commit made in a VM restored from ``cid``: its parent is ``cid``.
            child, _tm = verbs.commit(src, vm, "bench child")
        verbs.kill(src, [vm])
    push(src, "origin")
    # The child was never restored: its lazy restore borrows its parent's record.
    anc_steps: list[dict[str, float]] = []
    anc_repo, anc_vm, t_anc, anc_got, _ram, anc_source = lazy_restore(work, "fresh-child",
                                                                      child, url, anc_steps)
    verbs.kill(anc_repo, [anc_vm])
    anc_repo.close()

    t0 = time.perf_counter()
    full, _head = clone(url, str(work / "full"))
    secs, full_vm = restored_and_answering(full, cid, None)
    t_full = time.perf_counter() - t0
    verbs.kill(full, [full_vm])
    full.close()
    raw_bytes, t_raw = plain_copy(server, "lazy/", work / "plain")

    p50l, p99l = percentile(local, 0.5), percentile(local, 0.99)
    p50z, p99z = percentile(lazy, 0.5), percentile(lazy, 0.99)
    print(f"restore until exec answers, local store: p50 {p50l:.2f} s, p99 {p99l:.2f} s "
          f"(the first, recording: {local[0]:.2f} s; the others p50 "
          f"{percentile(local[1:] or local, 0.5):.2f} s)")
    print(f"restore until exec answers, lazily from S3 into a fresh repository: p50 {p50z:.2f} s, "
          f"p99 {p99z:.2f} s = {p50z / p50l:.2f}x local (goal <= 2x)")
    print(f"  of which bringing in the commit, trees and boot files (before QEMU starts): "
          f"p50 {percentile(FROM_REMOTE, 0.5):.2f} s")
    for kind in ("none", "own"):
        xs = [t for t, k in zip(lazy, sources, strict=True) if k == kind]
        if xs:
            print(f"  record: {kind}: {len(xs)} restore(s), p50 {percentile(xs, 0.5):.2f} s = "
                  f"{percentile(xs, 0.5) / p50l:.2f}x local")
    print(f"  record: {anc_source} (the child commit, never restored): {t_anc:.2f} s = "
          f"{t_anc / p50l:.2f}x local, fetched {anc_got / MB:.1f} MB")
    print_steps("local", local_steps)
    print_steps("lazy, with its own record", [st for st, k in zip(lazy_steps, sources,
                                                                   strict=True) if k == "own"])
    print_steps("lazy, with no record", [st for st, k in zip(lazy_steps, sources, strict=True)
                                         if k == "none"])
    print_steps(f"lazy, the child ({anc_source})", anc_steps)
    print(f"full clone + restore until exec answers: {t_full:.2f} s = {t_full / p50l:.2f}x local")
    f50 = percentile([float(b) for b in fetched], 0.5)
    print(f"fetched by the lazy restore: p50 {f50 / MB:.1f} MB = {f50 / nz:.1%} of the commit's "
          f"non-zero bytes (goal <= 10%); each: "
          + ", ".join(f"{b / nz:.1%} ({k})" for b, k in zip(fetched, sources, strict=True)))
    r_local = percentile([float(b) for b in local_ram], 0.5)
    r_lazy = percentile([float(b) for b in lazy_ram], 0.5)
    print(f"guest RAM read from the commit by the time exec answers: p50 {r_local / MB:.1f} MB "
          f"restoring locally, {r_lazy / MB:.1f} MB lazily")
    rate, raw = args.read_mib * (1 << 20) / MB / t_read, raw_bytes / MB / t_raw
    print(f"guest reading {args.read_mib} MiB sequentially, fetched on demand: {rate:.0f} MB/s "
          f"({got_read / MB:.0f} MB fetched meanwhile); plain boto3 GET of the bucket: "
          f"{raw:.0f} MB/s; ratio {rate / raw:.2f} (goal >= 0.5)")
    mib = args.read_mib * (1 << 20) / MB
    print(f"  the same read restored locally: {mib / t_local_read:.0f} MB/s from the local store, "
          f"{mib / t_cached_read:.0f} MB/s from the host's page cache (QEMU and the guest alone); "
          f"lazily = {t_local_read / t_read:.2f}x the local store's rate")
    print_read_trace(trace0, trace1, t_read)
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    src.close()


def no_record_bench(args: argparse.Namespace, work: Path) -> None:
    """``--mode no-record``: the restore that finds no touched-page record (a commit never
    restored anywhere), ``--repeat`` times each with RAM faults near each other fetching the
    blocks around them (``VERS_LAZY_CLUSTER_BLOCKS=1``) and without (``=0``, the default),
    alternately, each in a backing daemon of its own (started with that setting) and a fresh
    repository, the remote's records deleted before each."""
    url = f"s3://{BUCKET}/lazy"
    src, cid, nz = pushed_guest(args, work, url, None)  # the guest of --mode lazy
    local = [restored_and_answering(src, cid, None) for _ in range(2)]
    for _secs, vm in local:
        verbs.kill(src, [vm])
    transport = open_transport(url)
    arms: dict[str, list[tuple[float, int]]] = {"1": [], "0": []}
    for i in range(args.repeat):
        for arm in (["1", "0"] if i % 2 == 0 else ["0", "1"]):  # neither always goes first
            got = arms[arm]
            BackingDaemon().shutdown()  # the next restore starts one with this setting
            os.environ["VERS_LAZY_CLUSTER_BLOCKS"] = arm
            for key in transport.list("touched/"):
                transport.delete(key)
            fresh = Repo.init(work / f"fresh-{arm}-{i}")
            secs, vm = restored_and_answering(fresh, cid, url)
            got.append((secs, fresh.store.stats().bytes))
            print(f"no record, cluster blocks {arm}: {secs:.2f} s, "
                  f"{got[-1][1] / nz:.1%} of the non-zero bytes, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            verbs.kill(fresh, [vm])
            fresh.close()
    p50l = percentile([t for t, _vm in local], 0.5)
    print(f"local restore p50 {p50l:.2f} s")
    for arm, got in arms.items():
        ts = [t for t, _b in got]
        print(f"no record, cluster blocks {arm}: p50 {percentile(ts, 0.5):.2f} s, "
              f"p99 {percentile(ts, 0.99):.2f} s = {percentile(ts, 0.5) / p50l:.2f}x local; "
              f"fetched p50 {percentile([b / nz for _t, b in got], 0.5):.1%}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    src.close()


def main() -> None:
    if os.environ.get("VERS_LAZY_TRACE"):  # where the restore's time goes, on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        trace = logging.getLogger("vers.remote.lazy")
        trace.addHandler(handler)
        trace.setLevel(logging.DEBUG)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["push-clone", "lazy", "no-record"], default="push-clone")
    ap.add_argument("--size-mib", type=int, default=1024, help="push-clone: image size")
    ap.add_argument("--memory", default="512M", help="lazy: guest RAM")
    ap.add_argument("--disk-size", default=None,
                    help="lazy: guest disk (its file system must hold --read-mib)")
    ap.add_argument("--read-mib", type=int, default=128,
                    help="lazy: size of the file the restored guest reads sequentially")
    ap.add_argument("--repeat", type=int, default=3, help="lazy: restores of each kind")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="lazy: py-spy profiles of the backing daemon during the sequential "
                         "reads, in DIR")
    args = ap.parse_args()
    if args.mode in ("lazy", "no-record"):
        work = Path(tempfile.mkdtemp(prefix="vers-bench-lazy-"))
        try:
            with SeaweedS3(work / "weed") as server:
                os.environ.update(server.env())
                server.client().create_bucket(Bucket=BUCKET)
                if args.mode == "lazy":
                    lazy_bench(args, work, server)
                else:
                    no_record_bench(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="vers-bench-remote-"))
    try:
        with SeaweedS3(work / "weed") as server:
            os.environ.update(server.env())
            server.client().create_bucket(Bucket=BUCKET)
            url = f"s3://{BUCKET}/history"
            repo = Repo.init(work / "src")
            make_image(work / "m1", size, seed=1)
            changed = change_one_percent(work / "m1", work / "m2", seed=2)
            t0 = time.perf_counter()
            repo.snapshot({"memory": work / "m1"}, message="base")
            t_snap = time.perf_counter() - t0
            print(f"local `vers snapshot` of the {args.size_mib} MiB image (store write baseline): "
                  f"{t_snap:.2f} s = {size / MB / t_snap:.0f} MB/s")
            add_remote(repo, "origin", url)
            t0 = time.perf_counter()
            first = push(repo, "origin")
            t_push = time.perf_counter() - t0
            print(f"push of {args.size_mib} MiB image: {first.objects} objects, "
                  f"{first.bytes / MB:.1f} MB in {t_push:.2f} s "
                  f"({first.bytes / MB / t_push:.0f} MB/s)")

            before = bucket_bytes(url)
            repo.snapshot({"memory": work / "m2"}, message="1% changed")
            inc = push(repo, "origin")
            growth = bucket_bytes(url) - before
            print(f"incremental push, {changed / MB:.2f} MB of pages changed: sent "
                  f"{inc.objects} objects, bucket grew {growth / MB:.2f} MB = "
                  f"{growth / changed:.3f}x the changed bytes (goal <= 1.1x)")
            repo.close()

            t0 = time.perf_counter()
            cloned, _head = clone(url, str(work / "clone"))
            t_clone = time.perf_counter() - t0
            moved = bucket_bytes(url)
            cloned.close()
            base_bytes, t_base = plain_copy(server, "history/", work / "plain")
            vers_rate = moved / MB / t_clone
            base_rate = base_bytes / MB / t_base
            image_rate = size / MB / t_clone
            print(f"clone of the {args.size_mib} MiB history: {t_clone:.2f} s = "
                  f"{image_rate:.0f} MB/s of machine image restored (goal >= 100 MB/s); "
                  f"{moved / MB:.0f} MB of bundles = {vers_rate:.0f} MB/s over the wire")
            print(f"plain boto3 copy (aws s3 sync style, 10 threads): {base_bytes / MB:.0f} MB in "
                  f"{t_base:.2f} s = {base_rate:.0f} MB/s")
            print(f"ratio vers clone / plain copy (same bytes): {vers_rate / base_rate:.2f}")
            print(f"ratio vers clone / local snapshot of the same image: {t_snap / t_clone:.2f}")
            print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
