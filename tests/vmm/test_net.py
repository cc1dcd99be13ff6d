"""Guest networking on real QEMU with real sockets, all on 127.0.0.1: the guest reaches servers on
the host through the user network's host address 10.0.2.2, published ports reach guest servers,
ports are runtime (never committed, never inherited), guest-internal connections survive branch
and restore, outside connections are reset by a restore, never hung."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from vers.repo import Repo
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.state import VMRecord

from .conftest import gexec, vers

MEMORY_BACKING = "fuse" if os.path.exists("/dev/fuse") else "shm"
pytestmark = [pytest.mark.vm]


def host_port_of(rec: VMRecord, guest_port: int) -> int:
    return next(p["host_port"] for p in rec.runtime.ports if p["guest_port"] == guest_port)


def fetch(port: int, timeout: float = 10) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as r:
        return str(r.read().decode())


@contextlib.contextmanager
def host_server(handle: Any) -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server on 127.0.0.1 calling ``handle(conn)`` per connection in a thread; yields its
    port and the connections it accepted."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1], conns
    finally:
        srv.close()
        for c in conns:
            c.close()


@pytest.fixture(scope="module")
def web(vmrepo: Repo) -> VMRecord:
    """A guest serving /www on guest port 8000 (busybox httpd), published on a free host port."""
    rec = run_vm(vmrepo, RunOptions(name="web", ports=("8000",)))
    gexec(rec, "mkdir -p /www && echo hello-from-the-guest > /www/index.html && "
               "httpd -p 8000 -h /www")
    return rec


def test_guest_fetches_a_page_and_talks_tcp_to_the_host(web: VMRecord) -> None:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"page-from-the-host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        page = gexec(web, f"wget -q -O - http://10.0.2.2:{httpd.server_address[1]}/")
        assert page == "page-from-the-host\n"
    finally:
        httpd.shutdown()
        httpd.server_close()

    def echo(c: socket.socket) -> None:
        with c:
            c.sendall(b"pong:" + c.recv(100))

    with host_server(echo) as (port, _):
        assert gexec(web, f"echo ping | nc 10.0.2.2 {port}").strip() == "pong:ping"
    assert "10.0.2.15/24" in gexec(web, "ip addr show eth0")


def test_published_port_and_vers_port(vmrepo: Repo, web: VMRecord) -> None:
    port = host_port_of(web, 8000)
    assert fetch(port) == "hello-from-the-guest\n"
    out = vers(vmrepo.root, "port", "web").stdout
    assert out.strip() == f"8000/tcp -> 127.0.0.1:{port}"
    ps = json.loads(vers(vmrepo.root, "ps", "--format", "json").stdout)
    assert [r["ports"] for r in ps if r["name"] == "web"] == [[
        {"proto": "tcp", "host_ip": "127.0.0.1", "host_port": port, "guest_port": 8000}]]
    assert json.loads(vers(vmrepo.root, "status", "web").stdout)["ports"][0]["host_port"] == port

    gexec(web, "httpd -p 9000 -h /www")
    extra = int(vers(vmrepo.root, "port", "add", "web", "9000").stdout)
    assert extra != port and fetch(extra) == "hello-from-the-guest\n"
    vers(vmrepo.root, "port", "rm", "web", "9000")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        fetch(extra, timeout=3)
    assert vers(vmrepo.root, "port", "web").stdout.strip() == f"8000/tcp -> 127.0.0.1:{port}"
    bad = vers(vmrepo.root, "port", "rm", "web", "9999", check=False)
    assert bad.returncode == 2 and "9999" in bad.stderr


def test_bad_ports_are_refused_and_leave_no_vm(vmrepo: Repo, web: VMRecord) -> None:
    before = vers(vmrepo.root, "ps", "-q").stdout.split()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        p = vers(vmrepo.root, "run", "-p", f"{taken}:80", check=False)
        assert p.returncode == 2 and f"127.0.0.1:{taken}" in p.stderr, p.stderr
        p = vers(vmrepo.root, "port", "add", "web", f"{taken}:80", check=False)
        assert p.returncode == 2 and f"127.0.0.1:{taken}" in p.stderr, p.stderr
    for args in (["-p", "80:x"], ["-p", "1.2.3:80:80"], ["--net", "none", "-p", "80"]):
        t0 = time.monotonic()
        p = vers(vmrepo.root, "run", *args, check=False)
        assert p.returncode == 2, (args, p.stderr)
        assert time.monotonic() - t0 < 10  # refused before anything started
    assert vers(vmrepo.root, "ps", "-q").stdout.split() == before


def test_ports_are_runtime_children_get_their_own(vmrepo: Repo, web: VMRecord) -> None:
    """A commit records no host ports; a child of a VM publishing guest port 8000 serves it on a
    host port of its own as soon as it is reported running; a restore publishes what it is
    asked to."""
    cid, _ = commit_vm(vmrepo, "web", "serving")
    assert "ports" not in json.dumps(vmrepo.get_commit(cid).config)
    (child,), _ = branch_vm(vmrepo, "web", name="web-child")
    mine, parents = host_port_of(child, 8000), host_port_of(web, 8000)
    assert mine != parents
    assert fetch(mine) == "hello-from-the-guest\n"  # no retry: running means serving
    assert fetch(parents) == "hello-from-the-guest\n"
    restored = restore_commit(vmrepo, cid, ports=("8000",))
    assert [p["guest_port"] for p in restored.runtime.ports] == [8000]
    assert fetch(host_port_of(restored, 8000)) == "hello-from-the-guest\n"
    bare = restore_commit(vmrepo, cid)
    assert bare.runtime.ports == []


def test_guest_loopback_connection_survives_branch_and_restore(vmrepo: Repo,
                                                               web: VMRecord) -> None:
    """One busybox nc server (it takes one connection) and one client over the guest's loopback,
    both with stdin held open (busybox nc quits at EOF on stdin): a line written after the branch
    or the restore reaches the server through the connection made before the commit."""
    gexec(web, "rm -f /tmp/fifo /tmp/got; mkfifo /tmp/fifo;"
               " setsid sh -c 'sleep 100000 | nc -l -p 7000 > /tmp/got'"
               " </dev/null >/dev/null 2>&1 &"
               " sleep 0.5; setsid sh -c 'sleep 100000 > /tmp/fifo' </dev/null >/dev/null 2>&1 &"
               " setsid sh -c 'nc 127.0.0.1 7000 < /tmp/fifo' </dev/null >/dev/null 2>&1 &"
               " echo before > /tmp/fifo")
    assert _wait_file(web, "/tmp/got", "before")
    cid, _ = commit_vm(vmrepo, "web", "loopback connection open")
    (child,), _ = branch_vm(vmrepo, "web")
    restored = restore_commit(vmrepo, cid)
    for rec, word in ((child, "in-the-child"), (restored, "in-the-restored"), (web, "parent")):
        gexec(rec, f"echo {word} > /tmp/fifo")
        assert _wait_file(rec, "/tmp/got", word), gexec(rec, "cat /tmp/got")
    assert "in-the-child" not in gexec(web, "cat /tmp/got")


def _wait_file(rec: VMRecord, path: str, word: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if word in gexec(rec, f"cat {path} 2>/dev/null; true"):
            return True
        time.sleep(0.2)
    return False


def test_outside_connection_is_reset_by_a_restore_not_hung(vmrepo: Repo, web: VMRecord) -> None:
    """A guest process writing on a connection to the host: in a restored VM its next segment is
    answered with a reset and the process exits with an error; the parent's connection lives on."""

    def drain(c: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while c.recv(4096):
                pass

    with host_server(drain) as (port, conns):
        gexec(web, "rm -f /tmp/nc-done; setsid sh -c '(while :; do echo x; sleep 0.2; done)"
                   f" | nc 10.0.2.2 {port}; echo rc=$? > /tmp/nc-done'"
                   " </dev/null >/dev/null 2>&1 &")
        deadline = time.monotonic() + 15
        while not conns and time.monotonic() < deadline:
            time.sleep(0.1)
        assert conns, "the guest never connected"
        cid, _ = commit_vm(vmrepo, "web", "outside connection open")
        restored = restore_commit(vmrepo, cid)
        assert _wait_file(restored, "/tmp/nc-done", "rc=", timeout=20)
        assert gexec(web, "cat /tmp/nc-done 2>/dev/null; true") == ""
        gexec(web, "pkill -f 'nc 10.0.2.2' ; true")
