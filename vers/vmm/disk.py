"""Copy-on-write disks as qcow2 overlay chains, and how a commit finds the blocks that changed.

Each VM disk is a chain ``base.raw <- layer1.qcow2 <- ... <- top.qcow2``; QEMU writes only to the
top. At a commit (guest stopped) QEMU switches to a new empty top (``blockdev-snapshot``), so
the layers below are frozen; the blocks changed since the base commit are exactly the clusters
allocated in the layers added since that commit (``qemu-img map``), and only those are copied out.
A branch freezes the parent's top the same way and gives the child its own overlay on it: the
frozen layers are shared read-only, so branching copies no disk data. Restoring a commit exports
its disk once into a sparse raw file shared by every VM restored from that commit.

Layers live in ``.vers/vms/_layers`` because a frozen layer can outlive the VM that wrote it (a
branch child may still read it); ``gc_layers`` removes the ones no VM record mentions.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vers.errors import VMError
from vers.objects.model import PAGE_SIZE
from vers.vmm.private import make_private, private_file

if TYPE_CHECKING:
    from vers.repo import Repo

#: the spare overlays a disk keeps ready: the next commit's top and the next branch child's
SPARE_SLOTS = ("top", "child")
#: how a commit's disk exported as the new base of a merged chain is named (vers.vmm.merge)
MERGED_BASE_SUFFIX = ".base.raw"


@dataclass
class Spare:
    """An empty overlay made in advance on ``backing`` (a disk's top when it was made)."""

    path: str
    backing: str


@dataclass
class DiskChain:
    """One VM disk: its qcow2 chain (base first, QEMU writes only the last), how many of those
    layers the base commit holds (``committed``: the rest changed since), its virtual size, and
    the spare overlays made for it in advance."""

    chain: list[str]
    committed: int = 0
    size: int = 0
    spares: dict[str, Spare] = field(default_factory=dict)

    @property
    def top(self) -> str:
        return self.chain[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"chain": list(self.chain), "committed": self.committed, "size": self.size,
                "spares": {k: {"path": v.path, "backing": v.backing}
                           for k, v in self.spares.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiskChain:
        return cls(chain=list(d["chain"]), committed=int(d.get("committed", 0)),
                   size=int(d.get("size") or 0),
                   spares={k: Spare(v["path"], v["backing"])
                           for k, v in d.get("spares", {}).items()})

    def child(self, top: Path) -> DiskChain:
        """The chain of a child whose own new top is ``top``, over our whole chain."""
        return DiskChain(self.chain + [str(top)], self.committed, self.size)

    def paths(self) -> set[str]:
        """Every layer file this disk uses or keeps ready."""
        return set(self.chain) | {sp.path for sp in self.spares.values()}

    def take_overlay(self, layers: Path, tag: str, slot: str) -> Path:
        """A new empty overlay on the current top: the spare made earlier when it still sits on
        that top (no qemu-img run on the critical path), else a fresh one."""
        if not self.size:  # a record written before sizes were kept
            self.size = image_size(Path(self.chain[0]))
        spare = self.spares.pop(slot, None)
        if spare and spare.backing == self.top and Path(spare.path).exists():
            return Path(spare.path)
        if spare:
            Path(spare.path).unlink(missing_ok=True)
        path = new_layer_path(layers, tag)
        create_overlay_unsafe(path, Path(self.top), self.size)
        return path

    def make_spares(self, layers: Path, tag: str) -> None:
        """Prepare overlays on the current top for the next commit and the next branch."""
        todo: dict[str, Path] = {}
        for slot in SPARE_SLOTS:
            old = self.spares.get(slot)
            if old and old.backing == self.top and Path(old.path).exists():
                continue
            if old:
                Path(old.path).unlink(missing_ok=True)
                del self.spares[slot]
            todo[slot] = new_layer_path(layers, tag)
        if not todo:
            return
        try:
            create_overlays_unsafe(list(todo.values()), Path(self.top), self.size)
        except BaseException:
            for path in todo.values():
                path.unlink(missing_ok=True)
            raise
        for slot, path in todo.items():
            self.spares[slot] = Spare(str(path), self.top)


def qemu_img(*args: str) -> str:
    return qemu_img_all([list(args)])[0]


def qemu_img_all(calls: list[list[str]]) -> list[str]:
    """Run several ``qemu-img`` commands at once (each takes ~10 ms, mostly start-up); their
    outputs in order. The first that fails raises, after all have ended."""
    return QemuImgRun(calls).outputs()


class QemuImgRun:
    """``qemu-img`` commands started together, to be collected later (``outputs``) or abandoned
    (``close``): they run while the caller waits for something else."""

    def __init__(self, calls: list[list[str]]) -> None:
        self.calls = calls
        self._procs: list[subprocess.Popen[str]] = []
        try:
            for args in calls:
                self._procs.append(subprocess.Popen(["qemu-img", *args],
                                                    stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True))
        except FileNotFoundError as exc:
            self.close()
            raise VMError("qemu-img not found: apt-get install qemu-utils") from exc

    def outputs(self) -> list[str]:
        """Their outputs in order; the first that failed raises, after all have ended."""
        outs = [p.communicate() for p in self._procs]
        for args, p, (_out, err) in zip(self.calls, self._procs, outs, strict=True):
            if p.returncode != 0:
                raise VMError(f"qemu-img {' '.join(args)} failed: {err.strip()}")
        return [out for out, _err in outs]

    def close(self) -> None:
        """Wait for them and drop their outputs (a reader of a file that stays put: nothing to
        kill)."""
        for p in self._procs:
            p.communicate()


def new_layer_path(layers: Path, tag: str) -> Path:
    return layers / f"{tag}-{secrets.token_hex(6)}.qcow2"


def image_format(path: Path) -> str:
    """Our own files say it in their suffix; a user's disk is asked about (raw or qcow2)."""
    if path.suffix in (".raw", ".qcow2"):
        return path.suffix[1:]
    fmt = json.loads(qemu_img("info", "-U", "--output=json", str(path))).get("format", "raw")
    if fmt not in ("raw", "qcow2"):
        raise VMError(f"{path}: disk format {fmt!r} is not supported (use raw or qcow2)")
    return str(fmt)


def unusable_disk(path: Path) -> str | None:
    """Why vers cannot run a VM on the user's disk ``path`` (its format, or a backing file of its
    own that is missing or unsupported), in one line; None if it can."""
    try:
        chain = json.loads(qemu_img("info", "-U", "--backing-chain", "--output=json", str(path)))
    except VMError as exc:
        return str(exc).split("failed: ", 1)[-1].splitlines()[-1].removeprefix("qemu-img: ")
    for info in chain:
        if info.get("format") not in ("raw", "qcow2"):
            return (f"{info.get('filename', path)}: disk format {info.get('format')!r} is not "
                    "supported (use raw or qcow2)")
    return None


def create_overlay(path: Path, backing: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(backing), "-F", image_format(backing),
             str(path))
    make_private(path)


def create_overlay_unsafe(path: Path, backing: Path, size: int, fmt: str | None = None) -> None:
    """An overlay made without opening ``backing`` (-u), so it can be prepared while QEMU still
    writes to it; QEMU reads the backing's metadata only when it opens the overlay later.
    ``fmt``: the backing's format, if known (else it is asked for)."""
    create_overlays_unsafe([path], backing, size, fmt)


def create_overlays_unsafe(paths: list[Path], backing: Path, size: int,
                           fmt: str | None = None) -> None:
    """``create_overlay_unsafe`` of several overlays on one backing, made at the same time."""
    fmt = fmt or image_format(backing)
    qemu_img_all([["create", "-q", "-f", "qcow2", "-u", "-b", str(backing), "-F", fmt, str(p),
                   str(size)] for p in paths])
    for p in paths:
        make_private(p)


def layers_in_use(disks: dict[str, DiskChain]) -> set[str]:
    out: set[str] = set()
    for d in disks.values():
        out |= d.paths()
    return out


def image_size(path: Path) -> int:
    info = json.loads(qemu_img("info", "-U", "--output=json", str(path)))
    return int(info["virtual-size"])


def read_layout(top: Path) -> QemuImgRun:
    """Start reading what ``capture_disk`` needs of a frozen top: its backing chain and which
    layer holds each cluster (``qemu-img info`` and ``map``)."""
    return QemuImgRun([["info", "-U", "--backing-chain", "--output=json", str(top)],
                       ["map", "-U", "--output=json", str(top)]])


def capture_disk(chain: list[str], new_layers: int, size: int, out: Path,
                 full: bool, layout: QemuImgRun | None = None) -> list[int] | None:
    """Write a sparse raw file holding the frozen chain's content where it changed.

    ``chain`` is base..top of frozen layers; the top ``new_layers`` of them were written since the
    base commit. With ``full`` (no usable base commit) the whole visible disk is written, read
    through qemu-img (so a user's disk with a backing chain of its own, or compressed clusters,
    comes out whole), and None is returned, meaning "read all pages"; otherwise only the changed
    clusters are copied, straight from the layer files, and their page indices are returned.
    ``layout``: ``read_layout`` of the top, started earlier (else it is read now).
    """
    top = Path(chain[-1])
    private_file(out, size)
    if full:
        if layout is not None:
            layout.close()
        qemu_img("convert", "-U", "-f", image_format(top), "-O", "raw", "-n", "--target-is-zero",
                 str(top), str(out))
        return None
    info, extents = (layout or read_layout(top)).outputs()
    files, new_layers = _new_layers(chain, new_layers, json.loads(info))
    dirty: list[int] = []
    fds: dict[int, int] = {}
    try:
        with open(out, "r+b") as fo:
            for ext in json.loads(extents):
                depth = int(ext.get("depth", 0))
                if depth >= new_layers or not ext.get("present", True):
                    continue
                start, length = int(ext["start"]), int(ext["length"])
                first = start // PAGE_SIZE
                dirty.extend(range(first, (start + length + PAGE_SIZE - 1) // PAGE_SIZE))
                if ext.get("zero") or not ext.get("data"):
                    continue
                if "offset" not in ext:  # vers's own layers are never compressed or encrypted
                    raise VMError(f"{files[depth]}: cluster at {start} has no plain offset")
                if depth not in fds:
                    fds[depth] = os.open(files[depth], os.O_RDONLY)
                _copy_range(fds[depth], fo.fileno(), int(ext["offset"]), start, length)
    finally:
        for fd in fds.values():
            os.close(fd)
    return sorted(set(dirty))


def _new_layers(chain: list[str], new_layers: int,
                infos: list[dict[str, Any]]) -> tuple[list[str], int]:
    """The files of the top's chain by depth (0 = top) as its qcow2 headers name them
    (``infos``: ``qemu-img info --backing-chain``), and how many of them, from the top, are not
    layers the base commit holds. The headers, not the record, say what ``qemu-img map``'s
    depths mean: a background stream may have taken frozen layers out of the chain after the
    record was written (vers.vmm.merge)."""
    files = [str(i["filename"]) for i in infos]
    committed = set(chain[:len(chain) - new_layers])
    n = 0
    while n < len(files) and files[n] not in committed:
        n += 1
    held = chain[:len(chain) - new_layers][::-1]  # the base commit's layers, top first
    if files[n:n + len(held)] != held:
        raise VMError(f"{chain[-1]}: its backing chain {files} does not end in the layers the "
                      "base commit holds")
    return files, n


def _copy_range(fin: int, fout: int, src: int, dst: int, length: int) -> None:
    step = 8 * 1024 * 1024
    done = 0
    while done < length:
        n = min(step, length - done)
        data = os.pread(fin, n, src + done)
        if not data:
            raise VMError("short read from a disk layer")
        os.pwrite(fout, data, dst + done)
        done += len(data)


def export_base(repo: Repo, commit: str, image: str, layers: Path) -> Path:
    """The commit's disk as a shared sparse raw file (made once per commit and image)."""
    path = layers / f"{commit}-{image}.raw"
    if path.exists():
        return path
    tmp = layers / f".{path.name}.{secrets.token_hex(4)}"
    try:
        repo.export_image(commit, image, str(tmp))
        os.chmod(tmp, 0o400)  # read-only, and ours only
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def gc_layers(layers: Path, in_use: set[str], live_vms: set[str]) -> list[Path]:
    """Delete layer files that no VM record mentions and whose creator VM is gone.

    A layer is named after the VM that made it; while that VM lives, its unrecorded layers may be
    in flight (a new top QEMU switched to a moment before the record is saved), so they stay.
    Commit bases exported for restores (.raw) are kept as a cache; those a merge exported as a
    VM's own new base (vers.vmm.merge) go with the last chain that names them."""
    removed: list[Path] = []
    if not layers.is_dir():
        return removed
    for p in layers.iterdir():
        if p.name.split("-", 1)[0] in live_vms:
            continue
        ours = p.suffix == ".qcow2" or p.name.endswith(MERGED_BASE_SUFFIX)
        if ours and str(p) not in in_use:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
