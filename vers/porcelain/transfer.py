"""``vers cp``: files in and out of running VMs and out of commits, as tar streams.

Every copy is a *source* that writes a tar stream and a *sink* that reads one, joined by a pipe
(or by stdin/stdout for ``-``, like ``docker cp``). A single regular file copied into a VM is
streamed as its bytes alone, with its mode and mtime passed beside them: the guest agent writes
it itself (protocol 1.3 ``put``: read from the port and written to the file in large writes, no
process in between), and an older agent through ``cat``, which is still faster than busybox tar
extracts a file:

    local path        tar of the file or tree, owned by root as docker cp does
    VM:PATH           ``tar -c`` in the guest, streamed out through the agent
    COMMIT:PATH       the commit's ext4 disk read through the store, only the file's own blocks
    -                 a tar stream on stdin (source) or stdout (sink)

Nothing is ever half-written under the target name: sinks extract into a hidden
``.vers-tmp-XXXXXX`` directory next to the target and rename it into place only once the whole
stream arrived and the source reported success; a failure (no space, a VM killed, a connection
lost) removes the temporary directory instead.
"""

from __future__ import annotations

import base64
import io
import os
import shlex
import shutil
import signal
import stat
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from vers.errors import BadInput, BadRevision, VMError
from vers.ext4.reader import ROOT_INO, Ext4, Inode, Pread
from vers.objects.model import PAGE_SIZE
from vers.vmm import agent
from vers.vmm.agent import STDIN_CHUNK, Channel, ExecResult, LegacyAgent, PutError
from vers.vmm.machine import pid_alive
from vers.vmm.state import registry

if TYPE_CHECKING:
    from vers.repo import Repo
    from vers.vmm.state import VMRecord

#: Exit codes of the guest-side scripts below, mapped to errors on the host.
NO_SUCH_PATH, IS_A_DIRECTORY, NOT_A_DIRECTORY = 66, 67, 68
COPY_CHUNK = 1 << 20


@dataclass
class CopyStats:
    bytes: int = 0  # tar stream bytes that went from source to sink
    seconds: float = 0.0
    store_bytes_read: int = 0  # COMMIT:PATH sources: bytes of pages read from the store


@dataclass(frozen=True)
class Location:
    kind: str  # "local", "stdio", "vm" or "commit"
    path: str
    vm: VMRecord | None = None
    commit: str | None = None

    def __str__(self) -> str:
        if self.vm is not None:
            return f"{self.vm.name or self.vm.id}:{self.path}"
        if self.commit is not None:
            return f"{self.commit[:12]}:{self.path}"
        return self.path


def parse_location(repo: Repo, text: str) -> Location:
    """``-``, ``VM:PATH``, ``REV:PATH`` or a local path (one with a '/' before any ':' is local,
    so ``./a:b`` names a local file)."""
    if text == "-":
        return Location("stdio", "-")
    head, sep, path = text.partition(":")
    if not sep or not head or "/" in head:
        return Location("local", text)
    if not path:
        raise BadInput(f"{text!r}: give a path after the ':'")
    rec = registry(repo).find(head)
    if rec is not None:
        return Location("vm", _guest_path(path), vm=rec)
    try:
        cid = repo.rev_parse(head)
    except BadRevision as exc:
        raise BadInput(f"{head!r} in {text!r} is neither a VM nor a commit") from exc
    return Location("commit", _guest_path(path), commit=cid)


def _guest_path(path: str) -> str:
    """Guest paths are absolute; a relative one is taken from /root, as `vers exec` runs."""
    return path if path.startswith("/") else f"/root/{path}"


def copy(repo: Repo, src: str, dst: str, recursive: bool = False,
         stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> CopyStats:
    """Copy ``src`` to ``dst`` (see the module docstring for the forms each can take)."""
    s, d = parse_location(repo, src), parse_location(repo, dst)
    if s.kind in ("local", "stdio") and d.kind in ("local", "stdio"):
        raise BadInput("one side of vers cp must be VM:PATH (or COMMIT:PATH as the source)")
    if d.kind == "commit":
        raise BadInput(f"{dst!r}: commits are read-only; copy into a VM, then commit it")
    source = _source(repo, s, recursive)
    stats = CopyStats()
    t0 = time.monotonic()
    if d.kind == "stdio":
        out = stdout or io.BufferedWriter(io.FileIO(1, "w", closefd=False))
        stats.bytes = source.stream_to(out)
        out.flush()
    else:
        sink = _sink(d, source)
        if isinstance(sink, VMSink) and sink.put is not None and isinstance(source, LocalSource):
            with open(source.path, "rb", buffering=0) as f:  # no pipe, no thread between
                stats.bytes = _receive(sink, f)
            sink.commit()
        elif s.kind == "stdio":
            stats.bytes = _receive(sink, stdin or io.BufferedReader(io.FileIO(0, closefd=False)))
            sink.commit()
        else:
            stats.bytes = _through_pipe(source, sink)
    stats.seconds = time.monotonic() - t0
    if isinstance(source, CommitSource):
        stats.store_bytes_read = source.bytes_read
    return stats


def _receive(sink: Sink, inp: BinaryIO) -> int:
    try:
        return sink.receive(inp)
    except BaseException:
        sink.abort()
        raise


def _through_pipe(source: Source, sink: Sink) -> int:
    """Run the source in a thread writing into a pipe that the sink reads; the sink's result is
    renamed into place only when the source finished without error."""
    rfd, wfd = os.pipe()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with open(wfd, "wb", buffering=COPY_CHUNK) as w:
                source.stream_to(w)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    worker = threading.Thread(target=produce, name="vers-cp-source", daemon=True)
    worker.start()
    try:
        with open(rfd, "rb", buffering=COPY_CHUNK) as r:
            n = sink.receive(r)
    except BaseException:
        sink.abort()
        worker.join()
        if errors:
            raise errors[0] from None
        raise
    worker.join()
    if errors:
        sink.abort()
        raise errors[0]
    sink.commit()
    return n


# -- sources ------------------------------------------------------------------------------

class Source:
    #: the name of the stream's one top entry (None: a tar stream from stdin, any entries)
    name: str | None = None

    def stream_to(self, out: BinaryIO) -> int:
        raise NotImplementedError


class _Counting(io.RawIOBase):
    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self.out, self.n = out, 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.n += len(b)
        self.out.write(b)
        return len(b)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


class LocalSource(Source):
    def __init__(self, path: str, recursive: bool) -> None:
        p = Path(path)
        if not p.exists() and not p.is_symlink():
            raise BadInput(f"{path}: no such file or directory")
        if p.is_dir() and not p.is_symlink() and not recursive:
            raise BadInput(f"{path} is a directory (use -r)")
        self.path = p
        self.name = p.resolve().name if p.name in ("", ".", "..") else p.name
        #: a regular file goes into a VM as its bytes alone, not as a tar stream (``VMSink``)
        self.plain = p.is_file() and not p.is_symlink()

    def stream_to(self, out: BinaryIO) -> int:
        if self.plain:
            with open(self.path, "rb") as f:
                return _copy_stream(f, out)
        counted = _Counting(out)
        with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=COPY_CHUNK) as tar:
            tar.add(str(self.path), arcname=self.name, filter=_as_root)
        return counted.n


def _copy_stream(inp: BinaryIO, out: BinaryIO) -> int:
    n = 0
    while chunk := inp.read(COPY_CHUNK):
        out.write(chunk)
        n += len(chunk)
    return n


class VMSource(Source):
    """``tar -c`` of the path in the guest; the checks run first, in the same command."""

    def __init__(self, loc: Location, recursive: bool) -> None:
        self.loc = loc
        self.recursive = recursive
        self.name = PurePosixPath(loc.path).name or "/"

    def stream_to(self, out: BinaryIO) -> int:
        p = shlex.quote(self.loc.path)
        script = (f"p={p}; [ -e \"$p\" ] || [ -h \"$p\" ] || exit {NO_SUCH_PATH}; "
                  f"if [ -d \"$p\" ] && [ ! -h \"$p\" ] && [ {int(self.recursive)} = 0 ]; "
                  f"then exit {IS_A_DIRECTORY}; fi; "
                  f"cd \"$(dirname \"$p\")\" && exec tar -c -f - \"./$(basename \"$p\")\"")
        rec = _running(self.loc)
        n = 0
        err: list[bytes] = []
        with agent.open_channel(rec.runtime.agent_sock, ["/bin/sh", "-c", script],
                                stdin=False) as ch:
            while True:
                ev = ch.next_event()
                assert ev is not None
                if ev.kind == "exit":
                    break
                if ev.kind == "stderr":
                    err.append(ev.data)
                    continue
                out.write(ev.data)
                n += len(ev.data)
        _check_guest(ev.code, self.loc, b"".join(err), "copying out of")
        return n


class CommitSource(Source):
    """Files of a commit's ext4 disk, read through the store: only the superblock, group
    descriptors, the inodes and directories on the path, and the file's own blocks."""

    def __init__(self, repo: Repo, loc: Location, recursive: bool, image: str = "disk") -> None:
        assert loc.commit is not None
        f = repo.open_image(loc.commit, image)
        self._pread = f.pread
        self.bytes_read = 0
        self.fs = Ext4(self._counting_pread, f.size)
        self.loc = loc
        self.node = self._lookup(loc.path)
        if self.node.kind == "dir" and not recursive:
            raise BadInput(f"{loc} is a directory (use -r)")
        self.name = PurePosixPath(loc.path).name or "/"

    def _counting_pread(self, offset: int, length: int) -> bytes:
        if length > 0:
            first, last = offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE
            self.bytes_read += (last - first + 1) * PAGE_SIZE
        return self._pread(offset, length)

    def _lookup(self, path: str) -> Inode:
        ino = ROOT_INO
        for part in PurePosixPath(path).parts[1:]:
            entries = self.fs.listdir(ino) if self.fs.inode(ino).kind == "dir" else {}
            if part not in entries:
                raise BadInput(f"{self.loc}: no such file or directory in that commit")
            ino = entries[part][0]
        return self.fs.inode(ino)

    def stream_to(self, out: BinaryIO) -> int:
        counted = _Counting(out)
        with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=COPY_CHUNK) as tar:
            self._add(tar, self.node, self.name or "/")
        return counted.n

    def _add(self, tar: tarfile.TarFile, node: Inode, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = stat.S_IMODE(node.mode), node.mtime
        info.uid, info.gid = node.uid, node.gid
        if node.kind == "file":
            info.size = node.size
            tar.addfile(info, io.BufferedReader(_InodeReader(self.fs, node, self._counting_pread),
                                                buffer_size=COPY_CHUNK))
        elif node.kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = b"".join(self.fs.read_file(node)).decode("utf-8", "surrogateescape")
            tar.addfile(info)
        elif node.kind == "dir":
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            for child, (ino, _ftype) in sorted(self.fs.listdir(node.ino).items()):
                if child not in (".", ".."):
                    self._add(tar, self.fs.inode(ino), f"{name}/{child}")
        # device nodes, fifos and sockets are skipped, as docker cp does


class _InodeReader(io.RawIOBase):
    """A file's content, read straight from its extents in large pieces (holes as zeros)."""

    def __init__(self, fs: Ext4, node: Inode, pread: Pread) -> None:
        super().__init__()
        self.fs, self.size, self.pread = fs, node.size, pread
        bs = fs.block_size
        self.runs = sorted((lg * bs, start * bs, count * bs) for lg, start, count
                           in fs.extents(node)[0])
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(b), self.size - self.pos)
        if want <= 0:
            return 0
        data = bytes(want)
        for logical, phys, length in self.runs:
            if logical <= self.pos < logical + length:
                data = self.pread(phys + self.pos - logical, min(want, logical + length - self.pos))
                break
            if logical > self.pos:  # a hole up to the next run
                data = bytes(min(want, logical - self.pos))
                break
        memoryview(b)[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _source(repo: Repo, loc: Location, recursive: bool) -> Source:
    if loc.kind == "local":
        return LocalSource(loc.path, recursive)
    if loc.kind == "vm":
        return VMSource(loc, recursive)
    if loc.kind == "commit":
        return CommitSource(repo, loc, recursive)
    return Source()  # stdin: the stream is read by the sink directly


# -- sinks --------------------------------------------------------------------------------

class Sink:
    def receive(self, inp: BinaryIO) -> int:
        """Take the whole tar stream, into a temporary place; returns its length."""
        raise NotImplementedError

    def commit(self) -> None:
        """Move what was received into place."""

    def abort(self) -> None:
        """Drop what was received."""


class LocalSink(Sink):
    def __init__(self, path: str, name: str | None) -> None:
        p = Path(path)
        if p.is_dir():
            self.dir, self.target = p, (p / name if name else None)
        elif name is None:
            raise BadInput(f"{path}: a tar stream is extracted into a directory, and this is none")
        else:
            self.dir, self.target = p.parent, p
            if not self.dir.is_dir():
                raise BadInput(f"{self.dir}: no such directory")
        self.name = name
        self.tmp: Path | None = None

    def receive(self, inp: BinaryIO) -> int:
        self.tmp = Path(tempfile.mkdtemp(prefix=".vers-tmp-", dir=self.dir))
        counted = _CountingReader(inp)
        with tarfile.open(fileobj=counted, mode="r|", bufsize=COPY_CHUNK) as tar:
            tar.extractall(self.tmp, filter="tar")
        return counted.n

    def commit(self) -> None:
        assert self.tmp is not None
        try:
            entries = [self.tmp / self.name] if self.name else list(self.tmp.iterdir())
            for e in entries:
                if not e.exists() and not e.is_symlink():
                    raise VMError(f"the copied stream did not contain {e.name!r}")
                _move_into(e, self.target if self.name and self.target else self.dir / e.name)
        finally:
            self.abort()

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _move_into(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; a directory onto an existing directory merges into it."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in src.iterdir():
            _move_into(child, dst / child.name)
        shutil.copystat(src, dst)
        return
    os.replace(src, dst)


class _CountingReader(io.RawIOBase):
    def __init__(self, inp: BinaryIO) -> None:
        super().__init__()
        self.inp, self.n = inp, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inp.read(len(b))
        memoryview(b)[:len(data)] = data
        self.n += len(data)
        return len(data)


#: Extract into a temporary directory next to the target, then rename (or merge) into place.
#: $1: target path, $2: name of the stream's top entry ("" for a tar stream of any entries);
#: with $3 and $4 the stream is one regular file's bytes (busybox tar extracts at ~2/3 of the
#: speed `cat` writes a file, under TCG), given its mode and mtime.
_EXTRACT = r'''d=$1; name=$2
if [ -z "$name" ]; then [ -d "$d" ] || exit 68; dir=$d
elif [ -d "$d" ] && [ ! -h "$d" ]; then dir=$d; d=$d/$name
else dir=$(dirname "$d"); [ -d "$dir" ] || exit 66
fi
tmp=$(mktemp -d "$dir/.vers-tmp-XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
go=
trap 'go=1' USR1
if [ -n "$3" ]; then  # the file's bytes alone; $3: its mode (octal), $4: its mtime
    cat > "$tmp/$name" && chmod "$3" "$tmp/$name" && touch -d "@$4" "$tmp/$name" || exit 1
else
    tar -x -f - -C "$tmp" || exit 1
fi
echo extracted
while [ -z "$go" ]; do sleep 1 </dev/null >/dev/null 2>&1 & s=$!; wait $s; kill $s 2>/dev/null; done
move() {
    if [ -d "$1" ] && [ ! -h "$1" ] && [ -d "$2" ] && [ ! -h "$2" ]; then
        cp -a "$1/." "$2/" || exit 1
    else
        mv -f "$1" "$2" || exit 1
    fi
}
if [ -n "$name" ]; then move "$tmp/$name" "$d"
else
    for e in "$tmp"/* "$tmp"/.[!.]*; do
        if [ -e "$e" ] || [ -h "$e" ]; then move "$e" "$dir/${e##*/}"; fi
    done
fi
exit 0
'''


class VMSink(Sink):
    """A regular file (``plain``) is written by the guest agent itself into a temporary file
    that it renames into place once the host ends the stream (agents of protocol 1.3 on;
    ``direct=False`` forces the older way). Otherwise ``tar -x`` (or ``cat``, for a file) runs in
    the guest into a temporary directory; the rename waits for SIGUSR1, which the host sends only
    once the source succeeded. Either way a stream cut short (source failed, vers killed) is
    never moved into place."""

    def __init__(self, loc: Location, name: str | None, plain: Path | None = None,
                 direct: bool | None = None) -> None:
        """``plain``: the stream is that regular file's bytes, not a tar stream."""
        self.loc = loc
        self.name = name
        self.put: agent.FilePut | None = None
        rec = _running(loc)
        sock = rec.runtime.agent_sock
        meta: list[str] = []
        conn: agent.AgentConnection | None = agent.acquire(sock, 30.0)
        try:
            if plain is not None:
                st = plain.stat()
                meta = [f"{st.st_mode & 0o7777:o}", str(int(st.st_mtime))]
                assert conn is not None
                if direct is not False and conn.minor >= agent.PUT_MINOR:
                    self.put = agent.FilePut(conn, loc.path, name=name or "",
                                             mode=st.st_mode, mtime_ns=st.st_mtime_ns,
                                             size=st.st_size)
                    conn = None  # the put holds the connection until it ends
            if self.put is None:  # the same connection: no second HELLO
                self.ch = agent.open_channel(sock, ["/bin/sh", "-c", _EXTRACT, "vers-cp",
                                                    loc.path, name or "", *meta])
        finally:
            if conn is not None:
                agent.release(conn)

    def receive(self, inp: BinaryIO) -> int:
        n = 0
        while True:
            data = inp.read(COPY_CHUNK)
            if not data:
                break
            if self.put is not None:
                try:
                    self.put.write(data)
                except PutError as exc:
                    raise _put_failed(self.loc, exc) from None
            else:
                self.ch.write(data)
                if self.ch.exited:
                    n += len(data)
                    break
            n += len(data)
        return n

    def commit(self) -> None:
        if self.put is not None:
            try:
                self.put.finish()
            except PutError as exc:
                raise _put_failed(self.loc, exc) from None
            return
        try:
            self.ch.close_stdin()
            err: list[bytes] = []
            out = b""
            while True:
                ev = self.ch.next_event()
                assert ev is not None
                if ev.kind == "exit":
                    break
                if ev.kind == "stdout":
                    out += ev.data
                    if out == b"extracted\n":
                        self.ch.signal(signal.SIGUSR1)
                else:
                    err.append(ev.data)
            _check_guest(ev.code, self.loc, b"".join(err), "copying into")
        finally:
            self.ch.close()

    def abort(self) -> None:
        if self.put is not None:
            self.put.abort()
            return
        if not self.ch.exited:
            try:
                self.ch.signal(signal.SIGTERM)
            except VMError:
                pass
        self.ch.close()


def _put_failed(loc: Location, exc: PutError) -> Exception:
    if exc.errname in ("ENOENT", "ENOTDIR"):
        return BadInput(f"{loc}: no such file or directory")
    if exc.errname == "EISDIR":
        return BadInput(f"copying into {loc}: {exc}")
    return VMError(f"copying into {loc} failed: {exc}")


def _sink(loc: Location, source: Source | None) -> Sink:
    name = source.name if source is not None else None
    if loc.kind == "local":
        return LocalSink(loc.path, name)
    plain = source.path if isinstance(source, LocalSource) and source.plain else None
    return VMSink(loc, name, plain)


# -- commands in a running VM (vers exec, vers connect) ---------------------------------------

__all__ = ["STDIN_CHUNK", "Channel", "LegacyAgent", "copy", "exec_json", "exec_script",
           "legacy_exec", "open_command", "run_command", "running_vm"]


def running_vm(repo: Repo, key: str | None) -> VMRecord:
    """The named (or current) VM, which must be running."""
    rec = registry(repo).resolve(key)
    if not pid_alive(rec.runtime.pid, rec.id):
        raise VMError(f"VM {rec.id} is not running")
    return rec


def open_command(repo: Repo, key: str | None, argv: list[str], *,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 stdin: bool = False, pty: bool = False, rows: int = 0,
                 cols: int = 0) -> Channel:
    """Start ``argv`` in the VM and return its channel (streamed output, stdin, signals, exit).
    Raises LegacyAgent for a guest that runs the shell agent of an earlier vers."""
    rec = running_vm(repo, key)
    return agent.open_channel(rec.runtime.agent_sock, argv, env=env, cwd=cwd, stdin=stdin,
                              pty=pty, rows=rows, cols=cols)


def exec_script(repo: Repo, key: str | None, command: list[str],
                timeout: float = 300.0) -> ExecResult:
    """``vers exec``'s command (one argument: a shell script; several: an argv) run to
    completion, through the shell agent of an earlier vers too."""
    if not command:
        raise BadInput("nothing to run: give a command after --")
    rec = running_vm(repo, key)
    return agent.guest_exec(rec.runtime.agent_sock, agent.command_script(command), timeout)


def exec_json(res: ExecResult) -> dict[str, Any]:
    """An exec result as JSON: output as text (invalid UTF-8 replaced) and as base64."""
    return {"returncode": res.returncode,
            "stdout": res.stdout.decode(errors="replace"),
            "stderr": res.stderr.decode(errors="replace"),
            "stdout_b64": base64.b64encode(res.stdout).decode(),
            "stderr_b64": base64.b64encode(res.stderr).decode()}


def run_command(repo: Repo, key: str | None, argv: list[str], *, input: bytes | None = None,
                env: dict[str, str] | None = None, cwd: str | None = None,
                timeout: float = 300.0) -> ExecResult:
    """``argv`` run to completion with ``input`` on its stdin, like subprocess.run; killed and
    GuestTimeout raised after ``timeout`` seconds."""
    rec = running_vm(repo, key)
    return agent.run(rec.runtime.agent_sock, argv, input=input, env=env, cwd=cwd,
                     timeout=timeout)


def legacy_exec(repo: Repo, key: str | None, command: list[str],
                timeout: float) -> ExecResult:
    """``command`` through the shell agent of an earlier vers: no stdin, output at the end."""
    rec = running_vm(repo, key)
    return agent.legacy_exec(rec.runtime.agent_sock, agent.command_script(command), timeout)


# -- helpers ------------------------------------------------------------------------------

def _running(loc: Location) -> VMRecord:
    rec = loc.vm
    assert rec is not None
    if not pid_alive(rec.runtime.pid, rec.id):
        raise VMError(f"VM {rec.id} is not running")
    return rec


def _check_guest(code: int, loc: Location, err: bytes, what: str) -> None:
    msg = err.decode(errors="replace").strip()
    if code == 0:
        return
    if code == NO_SUCH_PATH:
        raise BadInput(f"{loc}: no such file or directory")
    if code == IS_A_DIRECTORY:
        raise BadInput(f"{loc} is a directory (use -r)")
    if code == NOT_A_DIRECTORY:
        raise BadInput(f"{loc}: a tar stream is extracted into a directory, and this is none")
    raise VMError(f"{what} {loc} failed (exit {code}){': ' + msg if msg else ''}")
