"""Making every clone a machine of its own: after each branch child and each restore, before the
VM is reported running, one guest-agent round trip (an FS "fresh" request to an agent of protocol
1.4, which does the three steps itself; a shell script for older agents)

1. steps the guest's wall clock to the host's (a restored guest would otherwise be as old as its
   commit);
2. credits fresh host entropy (``os.urandom``) to the guest kernel's pool and forces its random
   generator to reseed (children of one branch would otherwise read the same bytes from
   ``/dev/urandom`` until the kernel reseeds on its own, up to a minute later);
3. writes the generation marker ``/run/vers/generation``: one line ``VMID N``, N counting the forks
   and restores in this machine's history (0 after ``vers run``), renamed into place, so guest
   programs can watch it for "I was cloned" (docs/vmm.md).

Writing to ``/dev/urandom`` only mixes bytes into the input pool, credits nothing and does not
reseed; that needs the ``RNDADDENTROPY`` and ``RNDRESEEDCRNG`` ioctls, which no busybox applet
issues. A 1.4 agent issues them itself; for older agents, ``entropy_helper`` is those two system
calls as a ~200-byte static x86_64 program, written into the guest's ``/run/vers`` on first use,
so every image gets it without a compiler or a package. (QEMU's ``vmgenid`` device would do this
inside the kernel, but the Debian cloud kernel is built without CONFIG_VMGENID: see
docs/vmm.md.)
"""

from __future__ import annotations

import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor

from vers.errors import VMError
from vers.vmm import agent as agent_mod
from vers.vmm.agent import CLOCK_MINOR, FRESH_MINOR, FS, Channel, LegacyAgent, guest_exec

#: where the marker and the helper live in the guest (a tmpfs, so part of the machine's RAM)
RUN_DIR = "/run/vers"
GENERATION = f"{RUN_DIR}/generation"
_HELPER = f"{RUN_DIR}/reseed"
#: bytes of host entropy mixed into the guest's pool per clone (a full ChaCha key's worth, twice)
ENTROPY_BYTES = 64
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2]), linux/random.h
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)


def entropy_helper() -> bytes:
    """A static x86_64 ELF executable: read a ``struct rand_pool_info`` (8-byte header + up to 64
    bytes) from stdin, ``ioctl(1, RNDADDENTROPY, it)`` (mix and credit), ``ioctl(1,
    RNDRESEEDCRNG)``, exit with the errno (0 when the kernel reseeded). Run it as root with
    /dev/urandom on stdout. Crediting matters: a guest without a hardware RNG (TCG) may never have
    had its generator initialised, and then there is nothing to reseed."""
    reseed = (b"\xb8\x10\x00\x00\x00"                         # mov eax, 16 (ioctl)
              b"\xbf\x01\x00\x00\x00"                         # mov edi, 1
              b"\xbe" + struct.pack("<I", RNDRESEEDCRNG) +    # mov esi, RNDRESEEDCRNG
              b"\x0f\x05")                                     # syscall
    code = (b"\x48\x81\xec\x80\x00\x00\x00"                     # sub rsp, 128
            b"\x31\xc0\x31\xff\x48\x89\xe6"                     # read(0, rsp,
            b"\xba" + struct.pack("<I", 8 + ENTROPY_BYTES) +     #      8 + ENTROPY_BYTES)
            b"\x0f\x05"
            b"\xb8\x10\x00\x00\x00\xbf\x01\x00\x00\x00"         # ioctl(1,
            b"\xbe" + struct.pack("<I", RNDADDENTROPY) +         #       RNDADDENTROPY,
            b"\x48\x89\xe2\x0f\x05"                             #       rsp)
            b"\x85\xc0\x75" + bytes([len(reseed)]) +             # test eax, eax; jnz exit
            reseed +
            b"\x89\xc7\xf7\xdf"                                  # exit: mov edi, eax; neg edi
            b"\xb8\x3c\x00\x00\x00\x0f\x05")                     # exit(edi)
    base, hdr = 0x400000, 64 + 56
    ehdr = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, 0x3E, 1,
                       base + hdr, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, hdr + len(code), hdr + len(code),
                       0x1000)
    return ehdr + phdr + code


def entropy_input(data: bytes) -> bytes:
    """What the helper reads: ``struct rand_pool_info`` crediting every bit of ``data``."""
    return struct.pack("<ii", len(data) * 8, len(data)) + data


def _octal(data: bytes) -> str:
    """Bytes as a printf(1) format of octal escapes: the shell's builtin printf writes them, no
    base64 process needed."""
    return "".join(f"\\{b:03o}" for b in data)


def fresh_script(vm_id: str, first: bool, set_date: bool = True) -> str:
    """The guest-side script; ``first``: a fresh boot (generation 0), else the count goes up.
    ``set_date``: the script steps the clock itself, to the whole second (``date -s``), for an
    agent that cannot set it to the microsecond."""
    gen = "n=0" if first else f"n=0; read -r _ n < {GENERATION} 2>/dev/null; n=$((${{n:-0}} + 1))"
    return "\n".join([
        f"date -s @{round(time.time())} >/dev/null || exit 10" if set_date else ":",
        f"[ -d {RUN_DIR} ] || mkdir -p {RUN_DIR}",
        (f"[ -x {_HELPER} ] || {{ printf '{_octal(entropy_helper())}' > {_HELPER} &&"
         f" chmod 755 {_HELPER}; }} || exit 11"),
        (f"printf '{_octal(entropy_input(os.urandom(ENTROPY_BYTES)))}' | {_HELPER} >/dev/urandom"
         " || exit 12"),
        gen,
        f"echo \"{vm_id} $n\" > {GENERATION}.new && mv {GENERATION}.new {GENERATION} || exit 13",
    ]) + "\n"


#: what each step of the guest script exits with when it fails
_STEPS = {10: "setting the clock", 11: "writing the entropy helper",
          12: "adding host entropy and reseeding", 13: "writing the generation marker"}


def fresh_request(vm_id: str, first: bool) -> bytes:
    """The FS "fresh" request of a protocol 1.4 agent: the host's time, FIRST, the VM ID and the
    host entropy in hex; the agent does the three steps itself, starting no guest process."""
    return (f"fresh {time.time():.6f} {int(first)} {vm_id} "
            f"{os.urandom(ENTROPY_BYTES).hex()}").encode()


def freshen(vm_id: str, agent_sock: str, first: bool = False, timeout: float = 30.0) -> None:
    """Make the guest distinct (clock, entropy, generation marker); a VMError saying which step
    failed if it did not finish. A protocol 1.4 agent does it in one FS request, with no guest
    process (fork and exec of a shell and its applets is what a freshly loaded TCG guest is slowest
    at). A 1.2 or 1.3 agent sets the clock to the microsecond (FS "clock", sent just before the
    script on the same connection: no extra round trip) and runs the script; earlier ones run the
    script alone, which sets the clock with ``date -s``, to the second."""
    try:
        conn = agent_mod.acquire(agent_sock, timeout)
    except LegacyAgent:
        res = guest_exec(agent_sock, fresh_script(vm_id, first), timeout)
    else:
        try:
            if conn.minor >= FRESH_MINOR:
                ch = conn.new_channel()
                conn.send(FS, ch.id, fresh_request(vm_id, first))
                _fs_answer(vm_id, ch, timeout, "")
                return
            clock = conn.new_channel() if conn.minor >= CLOCK_MINOR else None
            if clock is not None:
                conn.send(FS, clock.id, f"clock {time.time():.6f}".encode())
            res = guest_exec(agent_sock, fresh_script(vm_id, first, clock is None), timeout)
            if clock is not None:
                _fs_answer(vm_id, clock, timeout, "setting the clock")
        finally:
            agent_mod.release(conn)
    if res.returncode:
        what = _STEPS.get(res.returncode, f"exit {res.returncode}")
        raise VMError(f"making VM {vm_id} distinct failed ({what}): "
                      f"{res.stderr.decode(errors='replace').strip()}")


def _fs_answer(vm_id: str, ch: Channel, timeout: float, step: str) -> None:
    """Wait for the FS answer on ``ch``; a VMError naming ``step`` (or the step the agent names
    in its "error STEP: ..." answer) unless it is "ok ..."."""
    try:
        ev = ch.next_event(timeout)
    finally:
        ch.exited = True  # nothing runs on it: no CLOSE to send
        ch.close()
    answer = "" if ev is None else ev.data.decode(errors="replace")
    if not answer.startswith("ok "):
        detail = answer.removeprefix("error ") or "no answer"
        if not step and ": " in detail:
            step, detail = detail.split(": ", 1)
        raise VMError(f"making VM {vm_id} distinct failed"
                      f"{f' ({step})' if step else ''}: {detail}")


def freshen_all(vms: list[tuple[str, str]]) -> None:
    """``freshen`` each (VM ID, agent socket) at the same time: the guests run on their own."""
    if len(vms) == 1:
        freshen(*vms[0])
        return
    with ThreadPoolExecutor(len(vms)) as pool:
        for f in [pool.submit(freshen, vid, sock) for vid, sock in vms]:
            f.result()
