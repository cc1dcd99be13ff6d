"""Object values: pages, Merkle nodes, image trees and commits, with their canonical bytes.

An object's ID is blake3-256 over its canonical serialisation (docs/storage-format.md):

- page:   the raw page bytes (up to ``PAGE_SIZE``; only an image's last page may be shorter)
- node:   ``b"vers-node\\0"`` + level (u8) + ``FANOUT`` child IDs of 32 bytes
- tree:   canonical JSON describing one fixed-size image and naming its root node
- commit: canonical JSON naming the trees of the machine's images, config, parents, author, ...

An all-zero page, and a node whose children are all zero, is never stored: its ID is the canonical
empty ID ``ZERO_ID`` (32 zero bytes) at every level, so sparse images cost nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import blake3

from vers.errors import BadInput, CorruptObject

PAGE_SIZE = 4096
FANOUT = 256
ID_LEN = 32
ZERO_ID = bytes(ID_LEN)
ZERO_PAGE = bytes(PAGE_SIZE)
NODE_MAGIC = b"vers-node\0"
NODE_HEADER_LEN = len(NODE_MAGIC) + 1
NODE_ENTRIES_LEN = FANOUT * ID_LEN
ZERO_ENTRIES = bytes(NODE_ENTRIES_LEN)

# Object kinds as stored in the index (the canonical bytes do not depend on them).
KIND_PAGE = 1
KIND_NODE = 2
KIND_TREE = 3
KIND_COMMIT = 4
KIND_NAMES = {KIND_PAGE: "page", KIND_NODE: "node", KIND_TREE: "tree", KIND_COMMIT: "commit"}

#: what an image may be called (compiled on first use: re keeps the compiled patterns)
IMAGE_NAME = r"^[a-z][a-z0-9_-]{0,63}$"


def is_image_name(name: str) -> bool:
    return re.match(IMAGE_NAME, name) is not None


def is_object_id(text: object) -> bool:
    """Whether ``text`` is a whole object ID in hex (64 lower-case hex digits)."""
    return isinstance(text, str) and len(text) == 2 * ID_LEN \
        and all(c in "0123456789abcdef" for c in text)


def hash_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no white space, UTF-8; floats are refused because they do not round-trip."""
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise BadInput(f"floating-point values are not allowed in stored JSON: {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise BadInput(f"JSON object keys must be strings: {k!r}")
            _reject_floats(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _reject_floats(v)


def node_bytes(level: int, entries: bytes | bytearray) -> bytes:
    return NODE_MAGIC + bytes([level]) + bytes(entries)


def parse_node(oid: bytes, data: bytes) -> tuple[int, bytes]:
    """Returns (level, entries) of a node's canonical bytes."""
    if len(data) != NODE_HEADER_LEN + NODE_ENTRIES_LEN or not data.startswith(NODE_MAGIC):
        raise CorruptObject(oid.hex(), "not a tree node")
    return data[len(NODE_MAGIC)], data[NODE_HEADER_LEN:]


@dataclass(frozen=True)
class Tree:
    """One fixed-size image (memory, a disk, device state) as a Merkle tree of pages."""

    size: int
    root: bytes
    depth: int
    page_size: int = PAGE_SIZE
    fanout: int = FANOUT

    @property
    def num_pages(self) -> int:
        return -(-self.size // self.page_size)

    @staticmethod
    def depth_for(size: int, page_size: int = PAGE_SIZE, fanout: int = FANOUT) -> int:
        pages = max(1, -(-size // page_size))
        depth = 1
        while fanout**depth < pages:
            depth += 1
        return depth

    def serialize(self) -> bytes:
        return canonical_json(
            {
                "type": "tree",
                "size": self.size,
                "page_size": self.page_size,
                "fanout": self.fanout,
                "depth": self.depth,
                "root": self.root.hex(),
            }
        )

    @classmethod
    def parse(cls, oid: bytes, data: bytes) -> Tree:
        try:
            d = json.loads(data)
            if d.get("type") != "tree":
                raise ValueError("type is not tree")
            tree = cls(
                size=int(d["size"]),
                root=bytes.fromhex(d["root"]),
                depth=int(d["depth"]),
                page_size=int(d["page_size"]),
                fanout=int(d["fanout"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(oid.hex(), f"bad tree: {exc}") from exc
        if tree.page_size != PAGE_SIZE or tree.fanout != FANOUT or len(tree.root) != ID_LEN:
            raise CorruptObject(oid.hex(), "unsupported tree geometry")
        return tree


#: The commit format new commits are written in; version 1 commits are still read.
COMMIT_VERSION = 2
US_PER_S = 1_000_000


@dataclass(frozen=True)
class Commit:
    """The machine at one instant: the trees of its images plus what is needed to restore it.

    ``time_us`` is when the commit was made, in whole microseconds since the Unix epoch (UTC).
    Version 2 stores exactly that (``"time_us"``); version 1 stored whole seconds (``"time"``),
    read here as ``seconds * 1_000_000``. A commit keeps its version when it is re-serialised, so
    a stored commit always gives back its own bytes and ID.
    """

    images: dict[str, str]
    parents: list[str] = field(default_factory=list)
    author: str = ""
    time_us: int = 0
    message: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    version: int = COMMIT_VERSION
    id: str = ""

    @property
    def time(self) -> int:
        """Whole seconds since the epoch (rounded down), as version 1 kept them."""
        return self.time_us // US_PER_S

    def serialize(self) -> bytes:
        for name in self.images:
            if not is_image_name(name):
                raise BadInput(f"bad image name {name!r} (want [a-z][a-z0-9_-]*)")
        if isinstance(self.time_us, bool) or not isinstance(self.time_us, int):
            raise BadInput(f"commit time must be whole microseconds, not {self.time_us!r}")
        body: dict[str, Any] = {
            "type": "commit",
            "version": self.version,
            "images": dict(self.images),
            "parents": list(self.parents),
            "author": self.author,
            "message": self.message,
            "config": self.config,
        }
        if self.version == 1:
            if self.time_us % US_PER_S:
                raise BadInput("a version 1 commit holds whole seconds only")
            body["time"] = self.time_us // US_PER_S
        elif self.version == COMMIT_VERSION:
            body["time_us"] = self.time_us
        else:
            raise BadInput(f"unknown commit format version {self.version!r}")
        return canonical_json(body)

    @classmethod
    def parse(cls, oid: bytes, data: bytes) -> Commit:
        try:
            d = json.loads(data)
            if d.get("type") != "commit":
                raise ValueError("type is not commit")
            version = d.get("version")
            if version == 1:
                time_us = _json_int(d["time"]) * US_PER_S
            elif version == COMMIT_VERSION:
                time_us = _json_int(d["time_us"])
            else:
                raise ValueError(f"unknown commit format version {version!r} "
                                 "(written by a newer vers?)")
            return cls(
                images={str(k): str(v) for k, v in d["images"].items()},
                parents=[str(p) for p in d["parents"]],
                author=str(d["author"]),
                time_us=time_us,
                message=str(d["message"]),
                config=dict(d["config"]),
                version=version,
                id=oid.hex(),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptObject(oid.hex(), f"bad commit: {exc}") from exc

    @property
    def summary(self) -> str:
        return self.message.splitlines()[0] if self.message else ""


def _json_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"time is not an integer: {value!r}")
    return value


def time_us_of(seconds: float) -> int:
    """Microseconds since the epoch for a time in seconds (an int, or a float rounded to the
    nearest microsecond)."""
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        return seconds * US_PER_S
    if isinstance(seconds, float):
        return round(seconds * US_PER_S)
    raise BadInput(f"a commit time is seconds since the epoch, not {seconds!r}")
