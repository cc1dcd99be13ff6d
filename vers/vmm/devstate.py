"""Device state and disk freezes over QMP: what commit, branch and restore ask of QEMU.

Guest RAM is share=on, so with the migration capability ``x-ignore-shared`` a migration stream
carries only device state (~50 KB). Everything that can happen before the guest is stopped does
(passing the file descriptor, opening the disks' next tops as block nodes), in one QMP round trip;
inside the pause, freezing the disks and saving device state are one more round trip.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from vers.errors import VMError
from vers.vmm.qmp import QMPClient
from vers.vmm.state import VMRecord, VMRegistry

T = TypeVar("T")
#: block nodes vers adds (``blockdev-add``) are named NODE_PREFIX + random hex
NODE_PREFIX = "vers-"
IGNORE_SHARED = ("migrate-set-capabilities",
                 {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})


@dataclass
class Timings:
    """Milliseconds of each phase; ``pause`` is what the guest noticed."""

    phases: dict[str, float] = field(default_factory=dict)
    pause: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.phases[name] = round((now - t0) * 1000, 2)
        return now


@contextmanager
def collector_off() -> Iterator[None]:
    """Python's cyclic garbage collector off for a guest's pause. It runs whenever allocations
    cross its threshold, and a full collection of a process that has imported the driver
    walks every object it holds: a pause that happens to trigger one is that much longer."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class Beside(Generic[T]):
    """Run one call in a worker thread while this thread talks QMP (both mostly wait on I/O:
    QEMU on one side, the memory backing's daemon or the kernel on the other)."""

    def __init__(self, fn: Callable[[], T], tm: Timings, phase: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future = self._pool.submit(self._timed, fn, tm, phase)

    @staticmethod
    def _timed(fn: Callable[[], T], tm: Timings, phase: str) -> T:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            tm.mark(phase, t0)

    def result(self) -> T:
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()


def _image_file(name: str) -> str:
    """The file of a QEMU image name: a node whose backing was changed at run time (a merged
    disk chain) is reported as ``json:{..., "file": {"filename": PATH}}``."""
    if name.startswith("json:"):
        try:
            spec = json.loads(name[len("json:"):])
        except ValueError:
            return name
        file = spec.get("file") if isinstance(spec, dict) else None
        if isinstance(file, dict) and isinstance(file.get("filename"), str):
            return file["filename"]
    return name


def adopt_qemu_chains(qmp: QMPClient, rec: VMRecord) -> list[str]:
    """Make each disk chain of ``rec`` what QEMU actually uses. A commit or branch that died
    between freezing a disk (QEMU switched to the new top) and saving the record leaves the
    record one layer short: the next commit would then miss what the guest wrote to that layer,
    and could even reuse it as a spare. One that died before the freeze leaves the next top open
    as a block node nothing uses, holding the file's write lock: such nodes are closed. Returns
    the layers adopted."""
    adopted: list[str] = []
    in_use: set[str] = set()
    blocks, named = qmp.batch(("query-block", {}), ("query-named-block-nodes", {"flat": True}))
    for block in blocks:
        d = rec.disks.get(block.get("device", ""))
        image = (block.get("inserted") or {}).get("image")
        if d is None or image is None:
            continue
        qemu_chain: list[str] = []
        while image is not None:
            qemu_chain.insert(0, _image_file(image["filename"]))
            image = image.get("backing-image")
        in_use |= set(qemu_chain)
        if qemu_chain[-1] == d.top:
            continue
        if d.top not in qemu_chain:
            raise VMError(f"disk {block['device']} of VM {rec.id}: QEMU writes to "
                          f"{qemu_chain[-1]}, which its record does not know")
        new = qemu_chain[qemu_chain.index(d.top) + 1:]
        d.chain += new
        d.spares = {k: sp for k, sp in d.spares.items() if sp.path not in new}
        adopted += new
    _drop_nodes(qmp, [n["node-name"] for n in named
                      if n.get("node-name", "").startswith(NODE_PREFIX) and n.get("drv") == "qcow2"
                      and n.get("file") not in in_use])
    return adopted


def prepare_freeze(reg: VMRegistry, rec: VMRecord) -> dict[str, Path]:
    """Create each disk's next top layer before the pause (without opening the current top)."""
    return {name: d.take_overlay(reg.layers, rec.id, "top") for name, d in rec.disks.items()}


def prepare_devstate(qmp: QMPClient, out: Path,
                     new_tops: dict[str, Path] | None = None) -> dict[str, tuple[str, str]]:
    """Everything for a device-state save that can happen before the guest is stopped, in one
    QMP round trip. Given ``new_tops``, also opens each prepared top layer as a QEMU
    block node now (``blockdev-add``), so that freezing a disk inside the pause is only a graph
    change (``blockdev-snapshot``: ~1 ms, against ~2 ms for ``blockdev-snapshot-sync``, which
    opens the file). Returns {disk: (node of its current top, node of the new top)}."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    try:
        qmp.pass_fd(fd)
    finally:
        os.close(fd)
    new_tops = new_tops or {}
    added = {name: f"{NODE_PREFIX}{secrets.token_hex(6)}" for name in new_tops}
    # getfd goes last: see QMPClient.batch
    results = qmp.batch(
        IGNORE_SHARED,
        ("query-block", {}),
        *(("blockdev-add", {"driver": "qcow2", "node-name": node, "backing": None,
                            "file": {"driver": "file", "filename": str(new_tops[name])}})
          for name, node in added.items()),
        ("getfd", {"fdname": "devstate"}),
        return_errors=True)
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        _drop_nodes(qmp, [n for n, r in zip(added.values(), results[2:-1]) if r == {}])
        raise errors[0]
    tops = {b["device"]: b["inserted"]["node-name"] for b in results[1] if b.get("inserted")}
    return {name: (tops[name], node) for name, node in added.items()}


def freeze_disks(qmp: QMPClient, rec: VMRecord, new_tops: dict[str, Path],
                 nodes: dict[str, tuple[str, str]], save_devstate: bool = False,
                 ) -> dict[str, list[str]]:
    """Switch QEMU to the prepared tops, already open as block ``nodes`` (``prepare_devstate``);
    returns each disk's now-frozen chain. With ``save_devstate`` the device-state migration is
    sent in the same round trip and waited for. ``rec`` records every switch QEMU made, even
    when another command failed."""
    names = list(rec.disks)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("blockdev-snapshot", {"node": nodes[name][0], "overlay": nodes[name][1]})
        for name in names]
    if save_devstate:
        calls.append(("migrate", {"uri": "fd:devstate"}))
    results = qmp.batch(*calls, return_errors=True)
    frozen = {}
    for name, res in zip(names, results):
        if not isinstance(res, Exception):
            d = rec.disks[name]
            frozen[name] = list(d.chain)
            d.chain = frozen[name] + [str(new_tops[name])]
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    if save_devstate:
        qmp.wait_migration(max_delay=0.0005)  # a few ms of device state: poll closely
    return frozen


def save_devstate(qmp: QMPClient) -> None:
    """Device state only (RAM is shared and skipped): the caller has stopped the guest and
    ``prepare_devstate`` handed QEMU the file as ``fd:devstate``."""
    qmp.command("migrate", uri="fd:devstate")
    qmp.wait_migration(max_delay=0.0005)  # a few ms of device state: poll closely


def offer_devstate(qmp: QMPClient, devstate: Path) -> None:
    """Hand a QEMU started with ``-incoming defer`` the device-state file and set
    x-ignore-shared, in one round trip. It reads nothing before ``load_devstate``, so this may
    happen while the file is still being written (a branch offers it to a standby child before
    the parent's pause)."""
    fd = os.open(devstate, os.O_RDONLY)
    try:
        qmp.pass_fd(fd)
    finally:
        os.close(fd)  # QEMU holds its own copy now
    qmp.batch(IGNORE_SHARED, ("getfd", {"fdname": "devstate"}))


def load_devstate(qmp: QMPClient, devstate: Path, timeout: float = 60.0,
                  offered: bool = False) -> None:
    """QEMU's snapshot-load path: -incoming defer, x-ignore-shared, migrate-incoming from a file
    (``offered``: ``offer_devstate`` already handed it over)."""
    if not offered:
        offer_devstate(qmp, devstate)
    qmp.command("migrate-incoming", uri="fd:devstate")
    deadline = time.monotonic() + timeout
    while True:
        status = qmp.command("query-status")["status"]
        if status != "inmigrate":
            break
        if time.monotonic() > deadline:
            raise VMError(f"loading device state did not finish within {timeout}s")
        time.sleep(0.0005)
    mig = qmp.command("query-migrate")
    if mig.get("status") == "failed":
        raise VMError(f"loading device state failed: {mig.get('error-desc', '')}")


def drop_unused_nodes(qmp: QMPClient, rec: VMRecord, new_tops: dict[str, Path],
                      nodes: dict[str, tuple[str, str]]) -> None:
    """After a failed commit or branch: remove the block nodes ``prepare_devstate`` added for the
    disks whose freeze did not happen (best effort)."""
    _drop_nodes(qmp, [new for name, (_, new) in nodes.items()
                      if str(new_tops[name]) not in rec.disks[name].chain])


def _drop_nodes(qmp: QMPClient, nodes: list[str]) -> None:
    for node in nodes:
        try:
            qmp.command("blockdev-del", **{"node-name": node})
        except VMError:
            pass


def drop_unused_tops(rec: VMRecord, new_tops: dict[str, Path]) -> None:
    """After a failed commit or branch: delete the prepared tops QEMU never switched to."""
    in_chain = {p for d in rec.disks.values() for p in d.chain}
    for top in new_tops.values():
        if str(top) not in in_chain:
            top.unlink(missing_ok=True)
