"""Guest networking benchmark: vers's VM against the same QEMU command line without vers.

In one run, on one 256 MiB default guest started by vers (``-p`` for guest port 8000) and one QEMU
started by hand with the very same command line (its own RAM file, disk overlay and sockets, the
forwarding rule on the command line instead of added over QMP) — the floor:

* guest-to-host TCP throughput through the user network: the guest sends ``--mib`` MiB with
  busybox ``nc`` to a server on the host's 127.0.0.1 (the guest's 10.0.2.2), timed on the host;
* published-port latency: the host fetches a page from the guest's busybox httpd through the
  published port, a new connection per request, median round trip.

Prints both and their ratio (goal >= 0.8: vers costs the guest's network nothing; docs/vmm.md).

    python3 bench/net.py [--mib 32] [--requests 50]
"""

from __future__ import annotations

import sys
from pathlib import Path

# this script's folder would be first on sys.path, where bench/bisect.py shadows the standard
# library's bisect: the repository goes there instead
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import dataclasses
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

from vers.repo import Repo
from vers.vmm.agent import guest_exec, wait_agent
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.control import list_vms
from vers.vmm.machine import Machine
from vers.vmm.net import claim, parse_port
from vers.vmm.state import VMRecord
from vers.vmm.teardown import kill_vms

GUEST_PORT = 8000


def gexec(sock: str, script: str) -> str:
    res = guest_exec(sock, script, 300)
    if res.returncode:
        raise RuntimeError(f"guest: {script}: {res.stderr!r}")
    return res.stdout.decode()


def throughput_mib_s(agent_sock: str, mib: int) -> float:
    """Bytes the guest sent through the user network per second, counted on the host."""
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[float] = []

    def count() -> None:
        c, _ = srv.accept()
        with c:
            n, t0 = 0, 0.0
            while chunk := c.recv(1 << 20):
                t0 = t0 or time.perf_counter()
                n += len(chunk)
            got.extend([n, time.perf_counter() - t0])

    t = threading.Thread(target=count)
    t.start()
    gexec(agent_sock, f"dd if=/dev/zero bs=64k count={mib * 16} 2>/dev/null"
                      f" | nc 10.0.2.2 {srv.getsockname()[1]}")
    t.join(120)
    srv.close()
    n, secs = got
    return n / secs / (1 << 20)


def latency_ms(host_port: int, requests: int) -> float:
    url = f"http://127.0.0.1:{host_port}/"
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def serve(agent_sock: str) -> None:
    gexec(agent_sock, "mkdir -p /www && echo hello > /www/index.html && "
                      f"httpd -p {GUEST_PORT} -h /www")


def bare_qemu(rec: VMRecord, work: Path) -> tuple[Machine, Path, int]:
    """The VM's own command line started by hand: fresh RAM file, an overlay on the same base
    disk, the forwarding rule as a plain ``hostfwd=`` option."""
    d = work / "bare"
    d.mkdir()
    mem = Path("/dev/shm") / f"vers-bench-net-{time.monotonic_ns()}.mem"
    with open(mem, "wb") as f:
        f.truncate(rec.spec.memory)
    base = rec.disks["disk"].chain[0]
    top = d / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw",
                    str(top)], check=True)
    disks = {"disk": dataclasses.replace(rec.disks["disk"], chain=[base, str(top)])}
    m = Machine(dataclasses.replace(rec, id="bench-net-bare", vm_dir=str(d), disks=disks))
    m.prepare()
    port = claim(parse_port(str(GUEST_PORT))).host_port
    args = [a.replace("user,id=net0", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}")
            for a in m.args(str(mem))]
    m.spawn(args)
    m.connect()
    m.close()
    wait_agent(m.record.runtime.agent_sock, 300)
    return m, mem, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vers-bench-net-") as tmp:
        repo = Repo.init(Path(tmp) / "repo")
        rec = run_vm(repo, RunOptions(make_current=False, ports=(str(GUEST_PORT),)))
        bare, mem, bare_port = bare_qemu(rec, Path(tmp))
        try:
            rows = {}
            for label, sock, port in (("vers", rec.runtime.agent_sock,
                                       rec.runtime.ports[0]["host_port"]),
                                      ("bare QEMU", bare.record.runtime.agent_sock, bare_port)):
                serve(sock)
                latency_ms(port, 3)  # warm the guest's page cache and httpd
                rows[label] = (statistics.median(throughput_mib_s(sock, args.mib)
                                                 for _ in range(args.repeat)),
                               latency_ms(port, args.requests))
        finally:
            bare.shutdown()
            mem.unlink(missing_ok=True)
            kill_vms(repo, [s.id for s in list_vms(repo)])
            repo.close()
    print(f"{'':<10} {'guest->host TCP':>16} {'port round trip':>16}")
    for label, (tput, lat) in rows.items():
        print(f"{label:<10} {tput:>12.1f}MiB/s {lat:>14.2f}ms")
    (vt, vl), (bt, bl) = rows["vers"], rows["bare QEMU"]
    print(f"{'ratio':<10} {vt / bt:>16.2f} {bl / vl:>16.2f}   (vers / floor; goal >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
