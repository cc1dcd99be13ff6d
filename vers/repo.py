"""A repository: one object store + one refs container + config, under ``DIR/.vers``.

This is the Python API for scripts (``vers.Repo``); the CLI and every porcelain verb go through it.
"""

from __future__ import annotations

import json
import os
import stat
import time as _time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Self, Union

from vers.errors import (
    BadInput,
    BadRevision,
    CorruptObject,
    NotARepository,
    ObjectNotFound,
    RefConflict,
    RepositoryExists,
    StoreError,
)
from vers.files import make_private_dirs, open_private, write_private
from vers.history import walk
from vers.history.timeindex import TimeIndex
from vers.objects.lmdbstore import LmdbObjectStore
from vers.objects.model import (
    KIND_COMMIT,
    PAGE_SIZE,
    Commit,
    hash_bytes,
    is_image_name,
    is_object_id,
    time_us_of,
)
from vers.objects.store import ObjectStore
from vers.refs.container import (
    HEAD,
    SYMREF_PREFIX,
    LmdbRefsContainer,
    RefsContainer,
    check_short_name,
    default_identity,
)
from vers.refs.revparse import rev_parse
from vers.refs.timespec import parse_time

if TYPE_CHECKING:  # the image trees and diffs are loaded by what reads or writes images
    from vers.objects.imagetree import ImageFile
    from vers.statediff import CommitDiff

VERS_DIRNAME = ".vers"
DEFAULT_BRANCH = "main"
ImageSource = Union[str, "os.PathLike[str]", BinaryIO]


class Repo:
    """``Repo(path)`` opens the repository at ``path`` (its work dir or its ``.vers`` dir)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path).absolute()
        if p.name != VERS_DIRNAME and (p / VERS_DIRNAME).is_dir():
            p = p / VERS_DIRNAME
        if not (p / "store").is_dir() or not (p / "config.json").is_file():
            raise NotARepository(f"not a vers repository: {path} (run `vers init`)")
        self.vers_dir = p
        self.root = p.parent
        try:
            self.config: dict[str, Any] = json.loads((p / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{p / 'config.json'}: cannot be read: {exc}") from exc
        self.store: ObjectStore
        lstore = LmdbObjectStore.open(p / "store")
        self.store = lstore
        try:
            self.refs: RefsContainer = LmdbRefsContainer(lstore.env)
            self.times = TimeIndex(lstore.env, lstore.get_commit)
        except BaseException:
            lstore.close()
            raise

    @classmethod
    def init(cls, path: str | os.PathLike[str] = ".") -> Self:
        root = Path(path).absolute()
        vers_dir = root / VERS_DIRNAME
        if (vers_dir / "config.json").exists():
            raise RepositoryExists(f"a vers repository already exists at {vers_dir}")
        if root.exists() and not root.is_dir():
            raise BadInput(f"{root} exists and is not a directory")
        try:
            make_private_dirs(vers_dir)
            LmdbObjectStore.create(vers_dir / "store").close()
            write_private(vers_dir / "config.json",
                          json.dumps({"format": 1, "default_branch": DEFAULT_BRANCH},
                                     indent=2) + "\n")
        except OSError as exc:
            raise BadInput(f"cannot create a repository at {root}: {exc.strerror}") from exc
        repo = cls(root)
        repo.refs.set_symbolic_ref(HEAD, "refs/heads/" + DEFAULT_BRANCH)
        return repo

    @classmethod
    def discover(cls, start: str | os.PathLike[str] = ".") -> Self:
        p = Path(start).absolute()
        for d in [p, *p.parents]:
            if (d / VERS_DIRNAME / "config.json").is_file() or (
                d.name == VERS_DIRNAME and (d / "config.json").is_file()
            ):
                return cls(d)
        raise NotARepository(f"not a vers repository (or any parent up to /): {p}")

    def close(self) -> None:
        self.store.close()

    # -- a partial store ----------------------------------------------------------------------
    def promisors(self) -> list[str]:
        """The remotes this repository's absent objects may be fetched from (config
        ``remotes.NAME.promisor``, set by ``clone --lazy``, ``fetch --lazy`` and ``run-commit
        --from``): its store may then lack objects its commits reach, as in git's partial clone.
        Who fetches them is attached from above (``vers.remote.lazy``) as ``store.absent``."""
        remotes = self.config.get("remotes", {})
        return [name for name, r in sorted(remotes.items()) if r.get("promisor")]

    @contextmanager
    def local_only(self) -> Iterator[None]:
        """Read only what is stored here meanwhile (fsck and gc judge the local store)."""
        absent, self.store.absent = self.store.absent, None
        try:
            yield
        finally:
            self.store.absent = absent

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- names and commits --------------------------------------------------------------------
    def rev_parse(self, rev: str, now: int | None = None) -> str:
        """The commit ID ``rev`` names (docs/cli.md, "Revisions"); ``now`` (microseconds since
        the epoch) is the present ``REF@{10 minutes ago}`` counts back from."""
        return rev_parse(self.refs, rev, self._commits_with_prefix, self.get_commit,
                         self.times.commit_at, now)

    def commit_at(self, rev: str, when: str | int, now: int | None = None) -> str:
        """The newest commit at or before ``when`` on ``rev``'s first-parent history, as
        ``REV@{WHEN}`` names it: ``when`` is a time as text (docs/cli.md, "Times") or
        microseconds since the epoch."""
        at = parse_time(when, now) if isinstance(when, str) else when
        return self.times.commit_at(self.rev_parse(rev, now), at, f"{rev} at {when!r}")

    def _commits_with_prefix(self, prefix: str) -> Iterator[str]:
        for oid, kind in self.store.iter_prefix(prefix):
            if kind == KIND_COMMIT:
                yield oid.hex()

    def get_commit(self, rev: str) -> Commit:
        """The commit ``rev`` names (a full ID is used as is, anything else goes through
        rev-parse)."""
        if is_object_id(rev):
            try:
                return self.store.get_commit(bytes.fromhex(rev))
            except ObjectNotFound as exc:
                raise BadRevision(f"unknown revision {rev}") from exc
            except CorruptObject as exc:
                if "expected a commit" in exc.reason:
                    raise BadRevision(f"{rev} is not a commit") from exc
                raise
        return self.get_commit(self.rev_parse(rev))

    def head_commit(self) -> str | None:
        return self.refs.resolve(HEAD)

    def current_branch(self) -> str | None:
        value = self.refs.read_ref(HEAD)
        if value and value.startswith(SYMREF_PREFIX + "refs/heads/"):
            return value[len(SYMREF_PREFIX + "refs/heads/") :]
        return None

    def set_head_detached(self, cid: str, message: str = "checkout") -> None:
        self.get_commit(cid)
        self.refs.set_ref(HEAD, cid, follow=False, message=message)

    def set_head_branch(self, branch: str, message: str = "checkout") -> None:
        self.refs.set_symbolic_ref(HEAD, "refs/heads/" + branch, message=message)

    # -- writing commits ----------------------------------------------------------------------
    def snapshot(
        self,
        images: Mapping[str, ImageSource],
        *,
        message: str = "",
        config: Mapping[str, Any] | None = None,
        parents: list[str] | None = None,
        dirty: Mapping[str, Iterable[int]] | None = None,
        ref: str | None = HEAD,
        author: str | None = None,
        time: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Store ``images`` as a new commit and advance ``ref`` (compare-and-swap); returns its ID.

        ``time`` (seconds since the epoch, a float kept to the microsecond) dates the commit
        instead of the clock, for imports and tests.

        With ``parents`` left out, the commit's parent is whatever ``ref`` points to when the ref
        moves: if another writer moved it meanwhile, the commit is re-parented onto theirs, so both
        land. With explicit ``parents``, a moved ref is a ``RefConflict``.
        """
        if not images:
            raise BadInput("nothing to commit: no images given")
        for name in images:
            if not is_image_name(name):
                raise BadInput(f"bad image name {name!r} (want [a-z][a-z0-9_-]*)")
        with self.store.writing():
            when = None if time is None else time_us_of(time)
            return self._snapshot(images, message, config, parents, dirty, ref, author, when,
                                  progress)

    def commit_state(
        self,
        images: Mapping[str, ImageSource],
        *,
        base: str | None,
        message: str = "",
        config: Mapping[str, Any] | None = None,
        dirty: Mapping[str, Iterable[int]] | None = None,
        source: str = "",
        branch: str | None = None,
        merge: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Commit the state of something whose images started from commit ``base`` (a live VM)
        and move a ref to it: branch ``branch`` when given (created at ``base`` if it does not
        exist yet), else HEAD (its branch); returns the new commit's ID.

        ``dirty`` is relative to ``base``, so ``base`` is always the first parent. If the ref still
        points at ``base`` (or at nothing yet), the commit simply advances it: N VMs forked from
        one commit and committed onto N branches give N siblings. If the ref has moved on since
        (another VM committed there), the commit is refused with ``RefConflict`` unless ``merge``
        is set: then the ref's commit becomes the second parent and the ref is fast-forwarded to
        it, so neither line of work is lost. ``source`` names the writer in the reflog of that
        merge (e.g. ``vm 1a2b3c4d``).
        """
        ref = HEAD
        if branch is not None:
            check_short_name(branch)
            ref = "refs/heads/" + branch
        tip = self.refs.resolve(ref)
        if tip is None and base is not None:
            # A new branch, or an unborn HEAD (a VM restored from a remote into a repository
            # with no commits yet): it starts at the VM's commit.
            self.refs.set_ref(ref, base, old=None, message=f"branch: created at {base[:12]}")
            tip = base
        if base is None or tip is None or tip == base:
            parents = [base] if base else ([tip] if tip else [])
            return self.snapshot(images, message=message, config=config, parents=parents,
                                 dirty=dirty, ref=ref, progress=progress)
        if not merge:
            where = f"branch {branch!r}" if branch else (
                f"branch {self.current_branch()!r}" if self.current_branch() else "HEAD")
            raise RefConflict(
                f"{where} has moved on since this VM's commit {base[:12]} (it is at {tip[:12]}): "
                "commit onto a branch of its own (--branch NAME), or join both lines with --merge")
        cid = self.snapshot(images, message=message, config=config, parents=[base, tip],
                            dirty=dirty, ref=None, progress=progress)
        self.refs.set_ref(ref, cid, old=tip, message=f"commit ({source}): {message}")
        return cid

    def _snapshot(
        self,
        images: Mapping[str, ImageSource],
        message: str,
        config: Mapping[str, Any] | None,
        parents: list[str] | None,
        dirty: Mapping[str, Iterable[int]] | None,
        ref: str | None,
        author: str | None,
        when: int | None,
        progress: Callable[[int], None] | None,
    ) -> str:
        explicit = parents is not None
        if parents is None:
            head = self.refs.resolve(ref) if ref else None
            parents = [head] if head else []
        from vers.objects.imagetree import build_tree, patch_tree

        base = self.get_commit(parents[0]) if parents else None
        trees: dict[str, str] = {}
        with ExitStack() as stack:
            opened = {n: _open_source(stack, n, src) for n, src in images.items()}
            with self.store.writer() as w:
                for name, (f, size) in opened.items():
                    base_tree = None
                    if base is not None and name in base.images:
                        base_tree = self.store.get_tree(bytes.fromhex(base.images[name]))
                    try:
                        if (dirty is not None and name in dirty and base_tree
                                and base_tree.size == size):
                            tree_id = patch_tree(w, base_tree, dirty[name],
                                                 *_page_readers(f, size))
                            if progress:  # only the dirty pages were read: the image is done
                                progress(size)
                        else:
                            f.seek(0)
                            tree_id = build_tree(w, f, size, base_tree, progress)
                    except OSError as exc:  # the writer drops what it has not flushed
                        raise BadInput(f"{name} image {_source_name(images[name])}: reading "
                                       f"failed: {exc.strerror or exc}") from exc
                    trees[name] = tree_id.hex()
                # the commit object goes into the same batch: one durable write, not two
                author = author or os.environ.get("VERS_AUTHOR") or default_identity()
                first = _new_commit(trees, parents, author, when, message, dict(config or {}))
                w.add(first[1], KIND_COMMIT, first[2], compress=False)
        return self._write_commit(first, trees, parents, explicit, ref, message,
                                  dict(config or {}), author, when)

    def _write_commit(
        self,
        written: tuple[Commit, bytes, bytes],
        trees: dict[str, str],
        parents: list[str],
        explicit: bool,
        ref: str | None,
        message: str,
        config: dict[str, Any],
        author: str,
        when: int | None,
    ) -> str:
        """Index the stored commit ``written`` and move ``ref`` to it; if another writer moved
        the ref meanwhile (and ``parents`` were not given), store the commit again on top of
        theirs and retry."""
        commit, oid, _data = written
        for _attempt in range(20):
            self.times.add(oid.hex(), commit)
            if ref is None:
                return oid.hex()
            expected = parents[0] if parents else None
            try:
                self.refs.set_ref(ref, oid.hex(), old=expected,
                                  message=f"commit: {commit.summary}" if message else "commit")
                return oid.hex()
            except RefConflict:
                if explicit:
                    raise
                now = self.refs.resolve(ref)
                parents = [now] if now else []
            commit, oid, data = _new_commit(trees, parents, author, when, message, config)
            with self.store.writer() as w:
                w.add(oid, KIND_COMMIT, data, compress=False)
        raise RefConflict(f"could not move {ref}: it kept changing under us")

    # -- reading images -----------------------------------------------------------------------
    def open_image(self, rev: str, name: str) -> ImageFile:
        from vers.objects.imagetree import ImageFile

        commit = self.get_commit(rev)
        if name not in commit.images:
            have = ", ".join(sorted(commit.images)) or "none"
            raise BadInput(f"commit {commit.id[:12]} has no image {name!r} (it has: {have})")
        return ImageFile(self.store, self.store.get_tree(bytes.fromhex(commit.images[name])), name)

    def export_image(self, rev: str, name: str, out: str | os.PathLike[str],
                     progress: Callable[[int], None] | None = None) -> None:
        """Write image ``name`` of ``rev`` to ``out``; ``progress`` gets the bytes of each
        stretch of the image written (or skipped over as zero)."""
        from vers.objects.imagetree import write_image

        image = self.open_image(rev, name)
        tmp = Path(str(out) + ".vers-tmp")
        try:
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
                write_image(self.store, image.reader.tree, f, progress)
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BadInput(f"cannot write {out}: {exc.strerror}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- history ------------------------------------------------------------------------------
    def log(
        self, rev: str = HEAD, exclude: Iterable[str] = (), first_parent: bool = False
    ) -> Iterator[Commit]:
        """Commits reachable from ``rev`` (or an ``A..B`` range), newest first."""
        if ".." in rev:
            a, b = rev.split("..", 1)
            include, excl = [self.rev_parse(b or HEAD)], [self.rev_parse(a or HEAD), *exclude]
        else:
            include, excl = [self.rev_parse(rev)], list(exclude)
        excl = [self.rev_parse(e) if len(e) != 64 else e for e in excl]
        return walk(self.get_commit, include, excl, first_parent)

    def diff(self, a: str, b: str) -> CommitDiff:
        from vers.statediff import diff_commits

        return diff_commits(self.store, self.get_commit(a), self.get_commit(b))


def _open_source(stack: ExitStack, name: str, src: ImageSource) -> tuple[BinaryIO, int]:
    f: BinaryIO
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        try:
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                raise BadInput(f"{name} image {path} is a directory")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                # A FIFO or a character device would block or never end: only files of a
                # fixed size can be images.
                raise BadInput(f"{name} image {path} is not a regular file or block device")
            f = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the ExitStack
            size = f.seek(0, os.SEEK_END)
        except FileNotFoundError as exc:
            raise BadInput(f"{name} image {path}: no such file") from exc
        except PermissionError as exc:
            raise BadInput(f"{name} image {path}: permission denied") from exc
        except OSError as exc:
            raise BadInput(f"{name} image {path} cannot be read as an image: "
                           f"{exc.strerror}") from exc
    else:
        f = src
        try:
            size = f.seek(0, os.SEEK_END)
        except (OSError, AttributeError) as exc:
            raise BadInput(f"{name} image must be a seekable file") from exc
    _check_size(name, size)
    f.seek(0)
    return f, size


def _new_commit(trees: dict[str, str], parents: list[str], author: str, when: int | None,
                message: str, config: dict[str, Any]) -> tuple[Commit, bytes, bytes]:
    """A commit object (not stored yet): (commit, ID, canonical bytes)."""
    # UTC microseconds and no time zone: the same state committed at the same instant has the
    # same ID on every machine (docs/storage-format.md).
    commit = Commit(images=trees, parents=parents, author=author,
                    time_us=_time.time_ns() // 1000 if when is None else when,
                    message=message, config=config)
    data = commit.serialize()
    return commit, hash_bytes(data), data


def _source_name(src: ImageSource) -> str:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else repr(src)


def _check_size(name: str, size: int) -> None:
    if name == "memory" and (size == 0 or size % PAGE_SIZE):
        raise BadInput(f"memory image size {size} is not a positive multiple of {PAGE_SIZE} bytes")
    if name.startswith("disk") and (size == 0 or size % 512):
        raise BadInput(f"{name} image size {size} is not a positive multiple of 512 bytes")


def _page_readers(f: BinaryIO, size: int
                  ) -> tuple[Callable[[int], bytes], Callable[[int, int], bytes]]:
    """Readers of one page and of a run of pages of ``f`` (the last page may be short)."""
    try:
        fd: int | None = f.fileno()
    except (OSError, AttributeError, ValueError):
        fd = None

    def read_run(page: int, count: int) -> bytes:
        n = min(count * PAGE_SIZE, size - page * PAGE_SIZE)
        if fd is None:
            f.seek(page * PAGE_SIZE)
            return f.read(n)
        data = os.pread(fd, n, page * PAGE_SIZE)
        while len(data) < n:  # a FUSE file may return a long read in parts
            more = os.pread(fd, n - len(data), page * PAGE_SIZE + len(data))
            if not more:
                break
            data += more
        return data

    return (lambda page: read_run(page, 1)), read_run
