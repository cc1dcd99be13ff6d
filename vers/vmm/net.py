"""Published ports: host ports forwarded into a guest on QEMU's user-mode network.

A VM's network is QEMU's user-mode stack (``-netdev user``): no root and no host configuration,
and every VM has a stack of its own, so every clone keeps the guest address 10.0.2.15. A published
port is a ``hostfwd`` rule on that stack, added and removed over QMP (``human-monitor-command``
``hostfwd_add`` / ``hostfwd_remove``), never put on the command line: the machine's command line is
what a commit's hardware is rebuilt from, and host ports are not part of the machine. They are the
VM's runtime (``Runtime.ports``), gone with its QEMU process: commits never record them and
children never inherit them, because two VMs cannot hold one host port.

Spec syntax, as docker's ``-p``: ``[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]`` or ``GUESTPORT``
(a free host port is picked). HOSTIP defaults to 127.0.0.1; all addresses (0.0.0.0) only when
asked for.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, replace
from typing import Any

from vers.errors import BadInput, VMError
from vers.vmm.machine import NETDEV
from vers.vmm.qmp import QMPClient

#: what ``--net`` accepts
NET_MODES = ("user", "none")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Port:
    """One forwarding rule: host ``host_ip:host_port`` to guest port ``guest_port``."""

    guest_port: int
    #: 0 until a free one is picked (``GUESTPORT`` specs)
    host_port: int = 0
    host_ip: str = LOOPBACK
    proto: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.guest_port}/{self.proto}"

    def to_dict(self) -> dict[str, Any]:
        """The form kept in ``Runtime.ports`` (vm.json)."""
        return {"proto": self.proto, "host_ip": self.host_ip, "host_port": self.host_port,
                "guest_port": self.guest_port}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Port:
        return cls(guest_port=int(d["guest_port"]), host_port=int(d["host_port"]),
                   host_ip=str(d.get("host_ip", LOOPBACK)), proto=str(d.get("proto", "tcp")))

    def rule(self) -> str:
        """The rule as ``hostfwd_add`` takes it."""
        return f"{self.proto}:{self.host_ip}:{self.host_port}-:{self.guest_port}"


def parse_port(spec: str) -> Port:
    """``[HOSTIP:]HOSTPORT:GUESTPORT[/PROTO]`` or ``GUESTPORT[/PROTO]``; BadInput otherwise."""
    text, _, proto = spec.strip().partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise BadInput(f"bad port spec {spec!r}: protocol must be tcp or udp")
    parts = text.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise BadInput(f"bad port spec {spec!r}: use [HOSTIP:]HOSTPORT:GUESTPORT or GUESTPORT")
    host_ip = parts[0] if len(parts) == 3 else LOOPBACK
    try:
        host_ip = str(ipaddress.IPv4Address(host_ip))
    except ValueError as exc:
        raise BadInput(f"bad port spec {spec!r}: {host_ip!r} is not an IPv4 address") from exc
    host = parts[-2] if len(parts) >= 2 else ""
    return Port(guest_port=_port_number(parts[-1], spec, allow_zero=False),
                host_port=_port_number(host, spec, allow_zero=True) if host else 0,
                host_ip=host_ip, proto=proto)


def parse_ports(specs: tuple[str, ...] | list[str]) -> list[Port]:
    """All specs, checked before anything starts: a bad one, or one host port asked for twice,
    is BadInput."""
    ports = [parse_port(s) for s in specs]
    fixed = [(p.proto, p.host_ip, p.host_port) for p in ports if p.host_port]
    if len(set(fixed)) != len(fixed):
        raise BadInput("the same host port is published twice: " + ", ".join(specs))
    return ports


def _port_number(text: str, spec: str, allow_zero: bool) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not (0 if allow_zero else 1) <= n <= 65535:
        raise BadInput(f"bad port spec {spec!r}: {text!r} is not a port number (1-65535)")
    return n


def _socket(port: Port) -> socket.socket:
    kind = socket.SOCK_STREAM if port.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    # QEMU's user network listens with SO_REUSEADDR: a port some other socket only left in
    # TIME_WAIT is free for it, one that something listens on is not
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def claim(port: Port) -> Port:
    """``port`` with a host port that is free now: the one asked for (BadInput naming it if
    something holds it) or, for 0, one the kernel picks."""
    with _socket(port) as s:
        try:
            s.bind((port.host_ip, port.host_port))
        except OSError as exc:
            raise BadInput(f"host port {port.host_ip}:{port.host_port} is not available "
                           f"({exc.strerror or exc}): publish another one") from exc
        return replace(port, host_port=s.getsockname()[1])


def check_ports(net: str, ports: list[Port]) -> None:
    """Before anything starts: ports need the user network, and each fixed host port must be
    free now (BadInput naming it otherwise)."""
    if ports and net != "user":
        raise BadInput(f"published ports need the user network, and this VM has --net {net}")
    for p in ports:
        if p.host_port:
            claim(p)


def publish(q: QMPClient, port: Port) -> None:
    """Add the forwarding rule to the running QEMU; BadInput naming the port if it cannot."""
    out = _hmp(q, f"hostfwd_add {NETDEV} {port.rule()}")
    if out:  # QEMU answers an empty string when the rule is in place
        raise BadInput(f"cannot publish host port {port.host_ip}:{port.host_port} "
                       f"(in use?): {out}")


def unpublish(q: QMPClient, port: Port) -> None:
    out = _hmp(q, f"hostfwd_remove {NETDEV} {port.proto}:{port.host_ip}:{port.host_port}")
    if not out.endswith(" removed"):  # QEMU says "host forwarding rule for ... removed"
        raise VMError(f"cannot remove the rule for {port}: {out}")


def _hmp(q: QMPClient, line: str) -> str:
    return str(q.command("human-monitor-command", **{"command-line": line})).strip()


def publish_all(q: QMPClient, specs: list[Port]) -> list[Port]:
    """Claim and publish each port; returns them with their host ports (for ``Runtime.ports``)."""
    done = []
    for p in specs:
        p = claim(p)
        publish(q, p)
        done.append(p)
    return done


def child_ports(parent: list[Port], asked: list[Port], count: int) -> list[Port]:
    """What one child of a branch publishes: the ports asked for (a fixed host port only for a
    single child: two VMs cannot hold one), and each guest port the parent publishes that was not
    asked for, on a host port of its own."""
    if count > 1 and any(p.host_port for p in asked):
        raise BadInput("a fixed host port cannot be published by several children: "
                       "give only the guest port (-p GUESTPORT) to pick one for each")
    named = {(p.proto, p.guest_port) for p in asked}
    inherited = [replace(p, host_port=0) for p in parent if (p.proto, p.guest_port) not in named]
    return [*asked, *inherited]


def find_published(ports: list[Port], spec: str) -> list[Port]:
    """The published ports a ``port rm`` spec names: ``GUESTPORT`` names every rule to that guest
    port, ``[HOSTIP:]HOSTPORT:GUESTPORT`` the one rule."""
    want = parse_port(spec)
    hits = [p for p in ports if p.guest_port == want.guest_port and p.proto == want.proto
            and (not want.host_port or (p.host_port, p.host_ip) == (want.host_port,
                                                                      want.host_ip))]
    if not hits:
        raise BadInput(f"no published port matches {spec!r}")
    return hits
