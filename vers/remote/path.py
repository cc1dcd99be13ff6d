"""A remote in a plain directory (a local disk, NFS, a USB stick).

Writes go to a temporary name and are renamed into place, so a reader never sees half a file and
a killed writer leaves only a ``.tmp-*`` file behind. Ref compare-and-swap takes an ``O_EXCL``
lock file; a lock older than ``LOCK_EXPIRY_SECONDS`` belongs to a dead writer and is broken.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from pathlib import Path

from vers.errors import RemoteError
from vers.objects.model import hash_bytes
from vers.remote.transport import LOCK_EXPIRY_SECONDS, RemoteObjectMissing, Transport

LOCK_NAME = "locks/refs.lock"
LOCK_WAIT_SECONDS = 30.0


class PathTransport(Transport):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.url = str(root)
        if root.exists() and not root.is_dir():
            raise RemoteError(f"{self.url}: not a directory, so it cannot be a remote")

    def check_reachable(self) -> None:
        if not self.root.is_dir():
            raise RemoteError(f"{self.url}: no such directory (removed, moved or not mounted?)")

    def _failed(self, what: str, key: str, exc: OSError) -> RemoteError:
        return RemoteError(f"{self.url}: cannot {what} {key}: {exc.strerror or exc}")

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise RemoteError(f"bad remote key {key!r}")
        return self.root / key

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise RemoteObjectMissing(self.url, key) from exc
        except OSError as exc:
            raise self._failed("read", key, exc) from exc

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise RemoteObjectMissing(self.url, key) from exc
        except OSError as exc:
            raise self._failed("read", key, exc) from exc
        try:
            chunks = []
            got = 0
            while got < length:
                try:
                    b = os.pread(fd, length - got, start + got)
                except OSError as exc:
                    raise self._failed("read", key, exc) from exc
                if not b:
                    break
                chunks.append(b)
                got += len(b)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise self._failed("write", key, exc) from exc

    def _list(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix) if prefix else self.root
        out: dict[str, int] = {}
        if not base.is_dir():
            return out
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                try:
                    out[full.relative_to(self.root).as_posix()] = full.stat().st_size
                except FileNotFoundError:
                    continue
        return out

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._failed("delete", key, exc) from exc

    def _read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failed("read", key, exc) from exc
        return data, hash_bytes(data).hex()

    def _unlock(self, token: Path) -> None:
        token.unlink(missing_ok=True)

    def _lock(self) -> Path:
        path = self._path(LOCK_NAME)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._failed("create", path.parent.name, exc) from exc
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale(path)
                if time.monotonic() > deadline:
                    raise RemoteError(
                        f"{self.url}: {LOCK_NAME} is held by another writer; if none is running, "
                        f"it expires {LOCK_EXPIRY_SECONDS:.0f}s after it was taken") from None
                time.sleep(0.05)
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise RemoteError(f"{self.url}: cannot take {LOCK_NAME}: {exc.strerror}") from exc
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": os.uname().nodename, "time": time.time()}, f)
            return path

    def _break_if_stale(self, path: Path) -> None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if age > LOCK_EXPIRY_SECONDS:
            # Rename is atomic: of several processes breaking the same stale lock, one wins.
            grave = path.parent / f".tmp-stale-{uuid.uuid4().hex}"
            try:
                os.rename(path, grave)
                grave.unlink()
            except FileNotFoundError:
                pass
