"""Bounded disk chains: after a commit, each disk's top is re-based onto the commit's stored disk.

Each commit freezes a disk's top and gives QEMU a new one (vers.vmm.disk), so left alone a VM's
chain and QEMU's open files grow by one layer per commit, and the commit pause with them (QEMU
inactivates and re-activates every node of the chain around the device-state save). Right after
a commit the frozen layers ``base <- L1 <- ... <- Ln`` hold exactly the commit's disk, which the
store now has, so the top (the only layer the guest writes) can take that disk as its backing:

    base <- L1 <- ... <- Ln <- top        becomes        disk(commit) <- shim <- top

The commit's disk is served lazily by the FUSE backing daemon (or, without it, exported once into
a sparse raw file); ``shim`` is an empty qcow2 overlay on it, made beforehand, because QEMU 7.2's
``change-backing-file`` records the backing's format as the image's own (qcow2), so a top must
never name a raw file as its backing. ``blockdev-add`` opens the shim (and through it the disk)
read-only, ``blockdev-reopen`` switches the top's backing to it while the guest runs (QEMU only
drains the disk for the switch; nothing is copied), and ``change-backing-file`` then writes the
new backing into the top's header. Of QEMU's ways to
shorten a chain this is the one that writes nothing anyone else reads: ``block-commit`` would
write into a lower layer that a branch child or a restore may be reading, ``block-stream`` would
copy committed blocks into the top, where the next commit would take them for changed ones. Here
frozen layers shared with a child stay as they are and only leave this VM's view; the ones no
VM record names any more are deleted. What the next commit captures stays exact: the base commit
now holds the two layers below the top (``committed = 2``) and the changed blocks are the clusters
written above them. A chain is then three layers long (four for a moment after each commit).

A command killed between the switch and saving the record leaves a record that names the old
layers, which hold the same content as the new base: the next commit captures only the layers
above ``committed``, which both chains share, and its merge drops the old layers then. A QEMU
killed at any point leaves files that open as before (the header names either backing, and both
exist); the commits themselves are in the store.

After a branch there is no new commit to re-base onto: ``stream_frozen_layers`` then copies the
frozen layers above the base commit's into the top with QEMU's ``block-stream`` job instead.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vers.errors import FuseError, VMError
from vers.vmm import disk as disk_mod
from vers.vmm.devstate import NODE_PREFIX
from vers.vmm.disk import DiskChain
from vers.vmm.machine import Machine
from vers.vmm.memory.fuse import BackingDaemon, disk_base
from vers.vmm.qmp import QMPClient
from vers.vmm.standby import drop_stale_standby
from vers.vmm.state import VMRecord, VMRegistry

if TYPE_CHECKING:
    from vers.repo import Repo

#: without the FUSE backing daemon the new base is a full (sparse) export of the commit's disk,
#: so a chain is merged only once it is this long, not after every commit
EXPORT_AFTER_LAYERS = 8


def merge_chains(repo: Repo, reg: VMRegistry, rec: VMRecord) -> list[str]:
    """Under the VM's lock, right after a commit of ``rec``: re-base each disk whose layers below
    the top all belong to the base commit onto that commit's stored disk, and delete the layers
    nobody uses any more; returns the files deleted.

    Never fails the commit, which is stored already: a merge that cannot be done leaves the chain
    as it was (still right), says why on stderr, and is tried again after the next commit."""
    lazy = rec.memory.get("kind") == "fuse"
    todo = {n: d for n, d in rec.disks.items() if _worth_merging(d, lazy)}
    if rec.base_commit is None or not todo:
        return []

    def rebase(q: QMPClient) -> list[str]:
        bases = {n: b for n in todo if (b := _commit_base(repo, reg, rec, n, lazy))}
        return _rebase(q, reg, rec, bases) if bases else []

    dropped = _reshape_running(reg, rec, "merged", rebase)
    return remove_unused(reg, dropped) if dropped else []


def _reshape_running(reg: VMRegistry, rec: VMRecord, what: str,
                     step: Callable[[QMPClient], list[str]]) -> list[str]:
    """Run ``step`` (which changes ``rec``'s chains in QEMU and in ``rec``, and returns the layers
    they dropped) on the VM's QMP if the VM is running; then save the record, close the block
    nodes nobody reads any more and drop the standby child that reads the old chain (it is made
    again afterwards). A VMError is one warning line on stderr and no change: the chain as it was
    is still right, and the next commit or branch tries again."""
    try:
        with Machine.attach(rec, qmp_timeout=60.0) as m:
            q = m.qmp()
            if q.command("query-status")["status"] != "running":
                return []  # e.g. left paused by `commit --pause`: its images are inactive
            dropped = step(q)
            if dropped:
                reg.save(rec)
                close_unused_nodes(q)
                drop_stale_standby(reg, rec)
    except VMError as exc:
        print(f"vers: VM {rec.id}: disk layers not {what} this time: {exc}", file=sys.stderr)
        return []
    return dropped


def _worth_merging(d: DiskChain, lazy: bool) -> bool:
    """Only the top is new since the base commit (right after a commit), and there are layers to
    drop: any with the lazy base, which costs nothing to make; without it, only a long chain."""
    if d.committed != len(d.chain) - 1 or len(d.chain) < 4:
        return False
    return lazy or len(d.chain) > EXPORT_AFTER_LAYERS


def _commit_base(repo: Repo, reg: VMRegistry, rec: VMRecord, name: str,
                 lazy: bool) -> Path | None:
    """The base commit's disk as a read-only file: on the FUSE backing daemon (read lazily from
    the store) when the VM's RAM is served by it anyway, else exported (sparse, once). None
    when it cannot be served lazily (e.g. a size that is not a whole number of pages) and the
    chain is not long enough yet to be worth an export."""
    assert rec.base_commit is not None
    if lazy:
        try:
            return disk_base(repo, rec.base_commit, name)
        except VMError:
            if len(rec.disks[name].chain) <= EXPORT_AFTER_LAYERS:
                return None
    path = reg.layers / f"{rec.id}-{rec.base_commit[:16]}-{name}{disk_mod.MERGED_BASE_SUFFIX}"
    if not path.exists():
        tmp = reg.layers / f".{path.name}.{secrets.token_hex(4)}"
        try:
            repo.export_image(rec.base_commit, name, str(tmp))
            os.chmod(tmp, 0o400)  # read-only, and ours only
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _rebase(q: QMPClient, reg: VMRegistry, rec: VMRecord, bases: dict[str, Path]) -> list[str]:
    """Switch each disk's top onto a shim over its new base in QEMU, then in the top's header;
    ``rec`` gets the chains of the disks where both happened. Returns the layers those chains
    dropped."""
    tops = {b["device"]: b["inserted"] for b in q.command("query-block")
            if b.get("device") in bases and b.get("inserted")}
    files = {n["file"]: n["node-name"] for n in q.command("query-named-block-nodes", flat=True)
             if n.get("drv") == "file"}
    plan: dict[str, tuple[str, str, Path]] = {}  # disk: (top node, shim node, shim)
    calls: list[tuple[str, dict[str, Any]]] = []
    for name, base in bases.items():
        top, d = tops.get(name), rec.disks[name]
        if top is None or top["file"] != d.top or top["file"] not in files:
            continue
        if not top["node-name"].startswith(NODE_PREFIX):
            continue  # not a node vers opened itself: its options are not known to reopen it
        shim = disk_mod.new_layer_path(reg.layers, rec.id)
        disk_mod.create_overlay_unsafe(shim, base, d.size or disk_mod.image_size(Path(d.top)))
        node = f"{NODE_PREFIX}{secrets.token_hex(6)}"
        plan[name] = (top["node-name"], node, shim)
        calls += [("blockdev-add", {"driver": "qcow2", "node-name": node, "read-only": True,
                                    "file": {"driver": "file", "filename": str(shim)}}),
                  ("blockdev-reopen", {"options": [{
                      "driver": "qcow2", "node-name": top["node-name"],
                      "file": files[top["file"]], "backing": node}]})]
    results = q.batch(*calls, return_errors=True) if calls else []
    switched: dict[str, tuple[str, Path]] = {}
    for i, (name, (top_node, node, shim)) in enumerate(plan.items()):
        added, reopened = results[2 * i], results[2 * i + 1]
        if isinstance(reopened, Exception):
            if not isinstance(added, Exception):
                _delete_nodes(q, [node])
            shim.unlink(missing_ok=True)
            print(f"vers: VM {rec.id}: disk {name} not merged: {reopened}", file=sys.stderr)
            continue
        switched[name] = (top_node, shim)
    headers = q.batch(*(("change-backing-file", {
        "device": name, "image-node-name": top_node, "backing-file": str(shim)})
        for name, (top_node, shim) in switched.items()), return_errors=True) if switched else []
    dropped: list[str] = []
    for (name, (_, shim)), res in zip(switched.items(), headers):
        if isinstance(res, Exception):  # QEMU reads the new base, the header names the old
            print(f"vers: VM {rec.id}: disk {name} not merged: {res}", file=sys.stderr)
            continue
        d = rec.disks[name]
        keep = {str(bases[name]), str(shim)}
        dropped += [p for p in d.chain[:-1] if p not in keep]
        d.chain, d.committed = [str(bases[name]), str(shim), d.top], 2
    return dropped


def close_unused_nodes(q: QMPClient) -> None:
    """Close the block nodes vers opened that no disk uses any more (QEMU keeps a node made by
    ``blockdev-add`` open until ``blockdev-del``, and each holds a file). A node in use, or one
    another unused node still reads as its backing, is refused; so go round until none goes."""
    while True:
        used: set[str] = set()
        for block in q.command("query-block"):
            image = (block.get("inserted") or {}).get("image")
            while image is not None:
                used.add(image["filename"])
                image = image.get("backing-image")
        stale = [n["node-name"] for n in q.command("query-named-block-nodes", flat=True)
                 if n.get("node-name", "").startswith(NODE_PREFIX) and n.get("file") not in used]
        if not stale or not _delete_nodes(q, stale):
            return


def _delete_nodes(q: QMPClient, nodes: list[str]) -> int:
    """``blockdev-del`` each node; how many went."""
    results = q.batch(*(("blockdev-del", {"node-name": n}) for n in nodes), return_errors=True)
    return sum(1 for r in results if not isinstance(r, Exception))


def remove_unused(reg: VMRegistry, dropped: list[str]) -> list[str]:
    """Delete the dropped layers (and the bases a merge made) that no VM record names; release
    the lazily-served disk bases no record names. Files vers did not make are never touched."""
    in_use: set[str] = set()
    for r in reg.all():
        in_use |= disk_mod.layers_in_use(r.disks)
    removed: list[str] = []
    daemon: BackingDaemon | None = None
    for p in dropped:
        path = Path(p)
        if p in in_use:
            continue
        if path.parent == reg.layers and (path.suffix == ".qcow2"
                                          or path.name.endswith(disk_mod.MERGED_BASE_SUFFIX)):
            path.unlink(missing_ok=True)
            removed.append(p)
        elif path.name.startswith("disk-"):
            daemon = daemon or BackingDaemon()
            if path.parent == daemon.mountpoint and daemon.alive():
                try:
                    daemon.request("remove", name=path.name)
                    removed.append(p)
                except FuseError:
                    pass  # a daemon that cannot remove it holds it until it exits
    return removed


# -- after a branch -----------------------------------------------------------------------------

#: frozen layers above the base commit's a VM keeps before a branch streams them into its top
STREAM_AFTER = 2
#: how long a stream may take (it copies only what the guest wrote since its last commit)
STREAM_TIMEOUT = 120.0


def stream_frozen_layers(reg: VMRegistry, rec: VMRecord) -> list[str]:
    """Under the VM's lock, right after a branch of ``rec``: bound its chains again.

    Each branch freezes the parent's top for the children to read and gives the parent a new top,
    so a VM branched again and again without a commit between would grow its chain by a layer
    per branch. Once a disk has ``STREAM_AFTER`` frozen layers above the ones its base commit
    holds, QEMU's ``block-stream`` job copies their clusters into the top (the guest keeps
    running; nothing below them is touched) and drops them from this VM's chain; the children go
    on reading them. What the next commit captures stays exact: the streamed clusters are
    changes since the base commit, which it stores anyway, and its capture follows the top's
    header (vers.vmm.disk.capture_disk), so a record written before a stream finished still
    reads right. Returns the layers dropped from ``rec``'s chains (the children still name
    them). Never fails the branch: a stream that fails or times out is cancelled, leaving the
    chain as it was."""
    todo = {n: d for n, d in rec.disks.items()
            if len(d.chain) - 1 - max(d.committed, 1) >= STREAM_AFTER}
    if not todo:
        return []
    return _reshape_running(reg, rec, "streamed", lambda q: _stream(q, rec, todo))


def _stream(q: QMPClient, rec: VMRecord, todo: dict[str, DiskChain]) -> list[str]:
    nodes = {n["file"]: n["node-name"] for n in q.command("query-named-block-nodes", flat=True)
             if n.get("drv") != "file" and n.get("node-name")}
    tops = {b["device"]: b["inserted"] for b in q.command("query-block")
            if b.get("device") in todo and b.get("inserted")}
    dropped: list[str] = []
    for name, d in todo.items():
        top, keep = tops.get(name), max(d.committed, 1)
        base = nodes.get(d.chain[keep - 1])
        if top is None or top["file"] != d.top or base is None:
            continue  # QEMU's view is not the record's (e.g. a json: name after a merge)
        job = f"vers-stream-{secrets.token_hex(4)}"
        q.command("block-stream", **{"job-id": job, "device": top["node-name"],
                                     "base-node": base, "auto-dismiss": False})
        error = _wait_job(q, job, STREAM_TIMEOUT)
        if error is not None:
            print(f"vers: VM {rec.id}: disk {name} not streamed: {error}", file=sys.stderr)
            continue
        dropped += d.chain[keep:-1]
        d.chain = d.chain[:keep] + [d.top]
    return dropped


def _wait_job(q: QMPClient, job: str, timeout: float) -> str | None:
    """Wait for block job ``job`` to conclude and dismiss it; its error, or None. Past
    ``timeout`` it is cancelled (a cancelled stream leaves the chain as it was)."""
    deadline = time.monotonic() + timeout
    cancelled = False
    while True:
        info = next((j for j in q.command("query-jobs") if j["id"] == job), None)
        if info is None:
            return "the job vanished"
        if info["status"] == "concluded":
            q.command("job-dismiss", id=job)
            return "cancelled: took too long" if cancelled else info.get("error")
        if not cancelled and time.monotonic() > deadline:
            q.command("block-job-cancel", device=job, force=True)
            cancelled = True
        time.sleep(0.01)
