"""Published-port specs, host-port claims and what a branch child publishes: no VM needed."""

from __future__ import annotations

import socket

import pytest

from vers.errors import BadInput
from vers.vmm.net import (
    Port,
    check_ports,
    child_ports,
    claim,
    find_published,
    parse_port,
    parse_ports,
)


def test_specs_like_dockers_p_and_loopback_by_default() -> None:
    assert parse_port("8000") == Port(8000, 0, "127.0.0.1", "tcp")
    assert parse_port("8080:80") == Port(80, 8080, "127.0.0.1", "tcp")
    assert parse_port("0.0.0.0:8080:80/udp") == Port(80, 8080, "0.0.0.0", "udp")
    assert parse_port("127.0.0.1::80") == Port(80, 0, "127.0.0.1", "tcp")
    p = Port(80, 8080)
    assert Port.from_dict(p.to_dict()) == p
    assert p.rule() == "tcp:127.0.0.1:8080-:80" and str(p) == "127.0.0.1:8080->80/tcp"


@pytest.mark.parametrize("spec", ["", "x", "80/sctp", "1:2:3:4", "70000", "0", "8080:",
                                  "localhost:80:80", "1.2.3:80:80", "-1:80", "80:0"])
def test_malformed_specs_are_bad_input(spec: str) -> None:
    with pytest.raises(BadInput):
        parse_port(spec)


def test_one_host_port_twice_is_refused() -> None:
    with pytest.raises(BadInput, match="twice"):
        parse_ports(["8080:80", "8080:81"])
    assert len(parse_ports(["8080:80", "8080:80/udp", "80", "80"])) == 4


def test_a_port_in_use_is_named_and_a_free_one_is_picked() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(BadInput, match=f"127.0.0.1:{busy}"):
            check_ports("user", [Port(80, busy)])
    got = claim(Port(80))
    assert got.host_port > 0 and got.host_ip == "127.0.0.1"
    with pytest.raises(BadInput, match="user network"):
        check_ports("none", [Port(80)])


def test_children_publish_the_parents_guest_ports_on_their_own_host_ports() -> None:
    parent = [Port(8000, 40001), Port(9000, 40002)]
    mine = child_ports(parent, [Port(9000, 41000)], 1)
    assert mine == [Port(9000, 41000), Port(8000, 0)]
    assert child_ports(parent, [], 3) == [Port(8000, 0), Port(9000, 0)]
    with pytest.raises(BadInput, match="several children"):
        child_ports(parent, [Port(9000, 41000)], 2)


def test_rm_specs_name_rules() -> None:
    ports = [Port(80, 8080), Port(80, 8081), Port(22, 2222)]
    assert find_published(ports, "80") == ports[:2]
    assert find_published(ports, "8081:80") == [ports[1]]
    with pytest.raises(BadInput):
        find_published(ports, "9999:80")
