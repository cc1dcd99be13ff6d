"""Push: send the objects a remote lacks in bundles, then move its refs by compare-and-swap."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vers.errors import RemoteError, VersError
from vers.history import is_ancestor
from vers.objects.model import ID_LEN
from vers.objects.store import ENC_DELTA, encode_record
from vers.progress import NO_PROGRESS, Progress
from vers.remote.bundle import DEFAULT_BUNDLE_BYTES, BundleUploader, RemoteIndex
from vers.remote.negotiate import plan_send
from vers.remote.refs import (
    RemoteRef,
    cas_remote_ref,
    ensure_format,
    read_remote_refs,
    set_remote_head_if_absent,
)
from vers.remote.transport import Transport

if TYPE_CHECKING:
    from vers.repo import Repo


log = logging.getLogger("vers.remote.push")


class PushRejected(RemoteError):
    """A ref update that would lose commits on the remote (non-fast-forward) or race a writer."""


@dataclass
class PushResult:
    updated: list[tuple[str, str | None, str]] = field(default_factory=list)  # ref, old, new
    up_to_date: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    bundles: int = 0


def check_updates(repo: Repo, remote_refs: dict[str, RemoteRef], updates: list[tuple[str, str]],
                  force: bool) -> list[tuple[str, str, RemoteRef | None]]:
    """Reject any non-fast-forward before a byte is sent; returns the updates still to make."""
    todo = []
    rejected = []
    for new, dst in updates:
        old = remote_refs.get(dst)
        if old is not None and old.value == new:
            continue
        if old is not None and not force:
            known = repo.store.contains(bytes.fromhex(old.value))
            if dst.startswith("refs/tags/"):
                rejected.append(f"{dst}: tag already exists on the remote at {old.value[:12]}")
            elif not known or not is_ancestor(repo.get_commit, old.value, new):
                why = "fetch first; it has commits you do not have" if not known else \
                    "your commit is not a descendant of the remote's"
                rejected.append(f"{dst}: non-fast-forward ({old.value[:12]} -> {new[:12]}): {why}")
        todo.append((new, dst, old))
    if rejected:
        raise PushRejected("push rejected, nothing was changed:\n  " + "\n  ".join(rejected)
                           + "\n(use --force to overwrite)")
    return todo


def push(repo: Repo, transport: Transport, updates: list[tuple[str, str]], *, force: bool = False,
         progress: Progress = NO_PROGRESS, bundle_bytes: int = DEFAULT_BUNDLE_BYTES,
         cache_dir: Path | None = None, head_branch: str | None = None) -> PushResult:
    """Make each remote ref ``dst`` point at local commit ``new`` for ``(new, dst)`` in
    ``updates``. Objects first, bottom-up in bundles; refs last, each by compare-and-swap."""
    result = PushResult()
    remote_refs = read_remote_refs(transport)
    todo = check_updates(repo, remote_refs, updates, force)
    result.up_to_date = [dst for new, dst in updates
                         if dst in remote_refs and remote_refs[dst].value == new]
    if not todo:
        _share_quietly(repo, transport, updates)
        return result
    ensure_format(transport)
    index = RemoteIndex.load(transport, cache_dir)
    plan = plan_send(repo.store, [new for new, _dst, _old in todo], index.__contains__)
    meter = progress.meter("push", total=len(plan), unit="objects", count_bytes=True)
    uploader = BundleUploader(transport, bundle_bytes, on_upload=meter.advance)
    sent: set[bytes] = set()
    try:
        for oid, rec in repo.store.get_records(plan.ordered()):
            data = repo.store.decode_record(oid, rec)  # never spread a corrupt object
            if rec.encoding == ENC_DELTA:
                base = rec.payload[:ID_LEN]
                if base not in sent and base not in index:
                    rec = encode_record(rec.kind, data)
            uploader.add(oid, rec)
            sent.add(oid)
        stats = uploader.finish()
    except BaseException:
        uploader.abort()
        raise
    finally:
        meter.close()
    result.objects, result.bytes, result.bundles = stats.objects, stats.bytes, stats.bundles
    lost = []
    for new, dst, old in todo:
        if cas_remote_ref(transport, dst, new, old):
            result.updated.append((dst, old.value if old else None, new))
        else:
            lost.append(dst)
    if head_branch:
        set_remote_head_if_absent(transport, head_branch)
    _share_quietly(repo, transport, updates)
    if lost:
        raise PushRejected(
            "another push moved " + ", ".join(lost) + " meanwhile; fetch and try again "
            "(the objects are uploaded; a retry sends only refs)")
    return result


def _share_quietly(repo: Repo, transport: Transport, updates: list[tuple[str, str]]) -> None:
    try:
        share_records(repo, transport, [new for new, _dst in updates])
    except RemoteError as exc:  # records are hints: the push is what was asked for
        log.info("touched-page records not sent: %s", exc)


def _trees_near(repo: Repo, tips: list[str]) -> list[str]:
    """The image trees of ``tips`` and of their first-parent ancestors within
    ``RECORD_ANCESTOR_STEPS`` (the records a lazy restore of a tip may borrow)."""
    from vers.remote.lazy import RECORD_ANCESTOR_STEPS

    out: list[str] = []
    for tip in dict.fromkeys(tips):
        cid: str | None = tip
        for _ in range(RECORD_ANCESTOR_STEPS + 1):
            if cid is None:
                break
            try:
                commit = repo.get_commit(cid)
            except VersError:
                break  # not here (a partial store): nothing to send for it
            out += commit.images.values()
            cid = commit.parents[0] if commit.parents else None
    return out


def share_records(repo: Repo, transport: Transport, tips: list[str]) -> int:
    """Send the touched-page records this repository has for the images of ``tips`` and of
    their nearest ancestors (the pages an earlier restore read first,
    ``vers.remote.lazy.TouchRecord``) that the remote lacks, so a lazy restore of those commits
    anywhere prefetches them. Returns how many were sent."""
    from vers.remote.lazy import RECORD_PREFIX, TouchRecord
    from vers.remote.lazy import share_records as sharing

    if not sharing():
        return 0
    found = []
    for tree_hex in dict.fromkeys(_trees_near(repo, tips)):
        record = TouchRecord(repo.vers_dir, tree_hex)
        if record.path.is_file():
            try:
                runs = record.load(repo.store.get_tree(bytes.fromhex(tree_hex)).num_pages)
            except VersError:
                continue  # the tree is not here (a partial store): nothing to check it by
            if runs:
                found.append((record, runs))
    if not found:
        return 0
    there = transport.list(RECORD_PREFIX)
    transport.check_reachable()
    sent = 0
    for record, runs in found:
        if record.key not in there and transport.put_if(record.key, record.encode(runs), None):
            sent += 1
    return sent
