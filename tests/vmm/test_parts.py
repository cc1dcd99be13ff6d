"""The VM driver's parts that need no running guest: command line and launch failures, records,
RAM change detection, disk capture from real qcow2 chains (written with qemu-io), the VM
registry, the agent's framing."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from vers.errors import BadInput, VMError
from vers.objects.model import PAGE_SIZE as PAGE
from vers.vmm import disk as disk_mod
from vers.vmm.agent import _parse_reply, command_script
from vers.vmm.disk import DiskChain
from vers.vmm.machine import Machine, default_cmdline, parse_size
from vers.vmm.memory.shm import ShmMemoryBacking, changed_pages, copy_pages
from vers.vmm.state import MachineSpec, Runtime, VMRecord, VMRegistry
from vers.vmm.tsc import host_tsc_khz


def _record(spec: MachineSpec, vm_dir: str = "/vm") -> VMRecord:
    return VMRecord(id="abcd1234", vm_dir=vm_dir, spec=spec, boot={"kernel": "k", "initrd": "i"},
                    disks={"disk": DiskChain(["/base.raw", "/d.qcow2"], 0, 1 << 20)},
                    runtime=Runtime(qmp_sock="/q", agent_sock="/a", serial_log="/s.log"))


def test_build_args_microvm_shared_memory_and_incoming() -> None:
    spec = MachineSpec(memory=256 << 20, vcpus=2, accel="tcg", cmdline=default_cmdline("tcg"))
    args = Machine(_record(spec)).args("/dev/shm/x.mem", incoming=True, qemu="qemu-system-x86_64")
    joined = " ".join(args)
    assert "-M microvm,memory-backend=mem" in joined
    assert "memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/x.mem,share=on" in joined
    assert "-smp 2" in joined and "-accel tcg" in joined and "-cpu host" not in joined
    assert "id=disk,file=/d.qcow2,format=qcow2" in joined and "-serial file:/s.log" in joined
    assert args[args.index("-append") + 1].split()[:1] == ["console=ttyS0"]
    khz = host_tsc_khz()
    assert f"tsc_early_khz={khz}" in joined and f"lpj={khz * 4}" in joined
    assert "tsc=reliable" in joined and "-cpu qemu64,+arat" in joined  # idle guests stop the tick
    assert "rcupdate.rcu_expedited=1" in joined  # fast file-system freezes
    assert args[-3:] == ["-S", "-incoming", "defer"]
    kvm = Machine(_record(MachineSpec(memory=256 << 20, accel="kvm"))).args("m", qemu="q")
    assert "-cpu" in kvm and "-incoming" not in kvm


def test_network_device_comes_last_and_only_with_the_user_network() -> None:
    """The virtio-net device follows every other device, so a machine without it (--net none,
    and every commit made before networking) keeps the hardware layout it was committed with;
    no host port is ever on the command line (ports are runtime, added over QMP)."""
    user = Machine(_record(MachineSpec(memory=64 << 20))).args("m", qemu="q")
    none = Machine(_record(MachineSpec(memory=64 << 20, net="none"))).args("m", qemu="q")
    i = user.index("-netdev")
    assert user[i:i + 4] == ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"]
    assert user[:i] + user[i + 4:] == none
    assert "virtserialport,chardev=agent,name=vers.agent" in user[:i]
    assert "hostfwd" not in " ".join(user)


def test_launch_failure_carries_the_command_line_and_log(tmp_path: Path) -> None:
    """A process that exits before QMP answers: a VMError with the command and qemu.log's tail,
    and a machine whose shutdown, then a second one, are harmless."""
    m = Machine(_record(MachineSpec(memory=64 << 20), str(tmp_path)))
    m.prepare()
    with pytest.raises(VMError) as info, m:
        m.spawn(["/bin/sh", "-c", "echo no such machine >&2; exit 3"])
        m.connect(wait=5.0)
    msg = str(info.value)
    assert "QEMU exited during start-up" in msg and "command: /bin/sh -c" in msg
    assert "no such machine" in msg and "qemu.log" in msg
    assert not m.is_running()
    m.shutdown()
    m.shutdown()


def test_machine_spec_dict_is_what_commits_record() -> None:
    """Commit IDs depend on this form: same keys, same order, same values as ever; a machine
    without a network device is recorded as before networking existed, and such a record (every
    older commit) restores without one."""
    spec = MachineSpec(memory=256 << 20, vcpus=2, cmdline="console=ttyS0", disks=["disk", "disk1"],
                       net="none")
    old_form = ('{"memory": 268435456, "vcpus": 2, "accel": "tcg", "cmdline": "console=ttyS0", '
                '"disks": ["disk", "disk1"], "machine": "microvm"')
    assert json.dumps(spec.to_dict()) == old_form + "}"
    assert MachineSpec.from_dict(spec.to_dict()) == spec
    with_net = dataclasses.replace(spec, net="user")
    assert json.dumps(with_net.to_dict()) == old_form + ', "net": "user"}'
    assert MachineSpec.from_dict(with_net.to_dict()) == with_net


def test_vm_record_round_trip_and_earlier_format(tmp_path: Path) -> None:
    rec = _record(MachineSpec(memory=64 << 20), str(tmp_path))
    rec.runtime.pid = 4242
    assert VMRecord.from_json(rec.to_json()) == rec
    old = {"id": "abcd1234", "vm_dir": str(tmp_path), "name": "web", "pid": 77,
           "qmp_sock": "/q", "agent_sock": "/a", "serial_log": "/s", "created": 1.0,
           "spec": {"memory": 64 << 20, "vcpus": 1, "accel": "tcg", "cmdline": "c",
                    "disks": ["disk"], "machine": "microvm"},
           "memory": {"kind": "shm", "path": "/dev/shm/x"}, "boot": {"kernel": "k"},
           "disks": {"disk": {"chain": ["/b", "/t"], "committed": 1, "size": 512,
                              "spares": {"top": {"path": "/s1", "backing": "/t"}}}},
           "base_commit": None, "parent_vm": None, "standby": False, "standby_child": None,
           "role": ""}
    got = VMRecord.from_json(json.dumps(old))
    assert got.runtime == Runtime(pid=77, qmp_sock="/q", agent_sock="/a", serial_log="/s")
    assert got.spec.memory == 64 << 20 and got.name == "web"
    assert got.disks["disk"].top == "/t" and got.disks["disk"].spares["top"].path == "/s1"
    assert got.disks["disk"].paths() == {"/b", "/t", "/s1"}


def test_parse_size() -> None:
    assert parse_size("256M") == 256 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("4096") == 4096
    with pytest.raises(VMError):
        parse_size("lots")


def _random_file(path: Path, pages: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(pages * PAGE)
    path.write_bytes(data)
    return data


def test_changed_pages_finds_exactly_the_modified_pages(tmp_path: Path) -> None:
    pages = 3000  # spans several comparison pieces and both threads
    _random_file(tmp_path / "a", pages, 1)
    shutil.copy(tmp_path / "a", tmp_path / "b")
    assert changed_pages(tmp_path / "a", tmp_path / "b", pages * PAGE) == []
    touched = sorted(random.Random(2).sample(range(pages), 57) + [0, pages - 1])
    with open(tmp_path / "b", "r+b") as f:
        for p in touched:
            f.seek(p * PAGE + 4095)  # the last byte of the page
            old = f.read(1)
            f.seek(p * PAGE + 4095)
            f.write(b"\x00" if old != b"\x00" else b"\x01")
    assert changed_pages(tmp_path / "a", tmp_path / "b", pages * PAGE) == touched
    copy_pages(tmp_path / "b", tmp_path / "a", touched)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_shm_backing_capture_reports_changes_since_last_commit(tmp_path: Path) -> None:
    size = 512 * PAGE
    b = ShmMemoryBacking.create("t1", size, where=tmp_path)
    with open(b.path, "r+b") as f:
        f.write(os.urandom(64 * PAGE))
    img, dirty = b.capture()
    assert dirty is None  # no base commit yet: everything must be read
    assert img.read_bytes() == b.path.read_bytes()
    b.commit_done(True)
    with open(b.path, "r+b") as f:
        for p in (3, 100, 511):
            f.seek(p * PAGE)
            f.write(b"x" * 10)
    img, dirty = b.capture()
    assert dirty == [3, 100, 511] and img.read_bytes() == b.path.read_bytes()
    b.commit_done(False)  # a failed commit: the next one must not trust the reference
    assert b.capture()[1] is None
    b.commit_done(True)
    # a fork pre-copies while the guest "runs", then fixes what changed meanwhile
    child = b.fork_begin("t2")
    with open(b.path, "r+b") as f:
        f.seek(7 * PAGE)
        f.write(b"late write")
    assert b.fork_end([child]) == 1
    assert child.path.read_bytes() == b.path.read_bytes()
    b.fork_reference(child)
    assert child.capture()[1] == [7]  # changed since the base commit both share
    for x in (b, child):
        x.destroy()
    assert list(tmp_path.iterdir()) == []


def _qemu_io(image: Path, cmd: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, str(image)], check=True,
                   capture_output=True)


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-utils not installed")
def test_capture_disk_reads_changed_clusters_from_a_real_qcow2_chain(tmp_path: Path) -> None:
    size = 4 << 20
    base = tmp_path / "base.raw"
    data = bytearray(random.Random(3).randbytes(size))
    data[1 << 20:2 << 20] = bytes(1 << 20)  # a zero region
    base.write_bytes(bytes(data))
    l1, l2 = tmp_path / "l1.qcow2", tmp_path / "l2.qcow2"
    disk_mod.create_overlay(l1, base)
    _qemu_io(l1, "write -P 0xab 65536 4096")
    disk_mod.create_overlay_unsafe(l2, l1, size)
    _qemu_io(l2, "write -P 0xcd 3145728 8192")
    _qemu_io(l2, "write -z 0 4096")
    expected = bytearray(data)
    expected[65536:65536 + 4096] = b"\xab" * 4096
    expected[3145728:3145728 + 8192] = b"\xcd" * 8192
    expected[0:4096] = bytes(4096)
    # only the top layer is new since the "base commit"
    out = tmp_path / "cap.raw"
    dirty = disk_mod.capture_disk([str(base), str(l1), str(l2)], 1, size, out, full=False)
    assert dirty is not None
    assert 0 in dirty and 3145728 // PAGE in dirty and 65536 // PAGE not in dirty
    cap = out.read_bytes()
    for p in dirty:
        assert cap[p * PAGE:(p + 1) * PAGE] == expected[p * PAGE:(p + 1) * PAGE]
    # both layers new; and the full image when there is no base commit at all
    dirty2 = disk_mod.capture_disk([str(base), str(l1), str(l2)], 2, size, out, full=False)
    assert dirty2 is not None and 65536 // PAGE in dirty2
    assert disk_mod.capture_disk([str(base), str(l1), str(l2)], 2, size, out, full=True) is None
    assert out.read_bytes() == bytes(expected)

    # a stream took l1 out of the top's chain (its data copied up) after the record was written:
    # the record still names [base, l1, l2], the top's header names base; the capture follows the
    # header, so the depths of qemu-img map are read from the right files
    disk_mod.qemu_img("rebase", "-f", "qcow2", "-b", str(base), "-F", "raw", str(l2))
    dirty3 = disk_mod.capture_disk([str(base), str(l1), str(l2)], 2, size, out, full=False)
    assert dirty3 is not None and {0, 65536 // PAGE, 3145728 // PAGE} <= set(dirty3)
    cap = out.read_bytes()
    for p in dirty3:
        assert cap[p * PAGE:(p + 1) * PAGE] == expected[p * PAGE:(p + 1) * PAGE]
    # a record whose base commit layers are not where the header chain ends is refused
    other = tmp_path / "other.raw"
    other.write_bytes(bytes(size))
    with pytest.raises(VMError, match="does not end in the layers"):
        disk_mod.capture_disk([str(other), str(l1), str(l2)], 1, size, out, full=False)


def test_registry_aliases_prefixes_and_current(tmp_path: Path) -> None:
    reg = VMRegistry(tmp_path)
    a = reg.create(name="web")
    b = reg.create()
    assert reg.resolve("web").id == a.id and reg.resolve(b.id[:6]).id == b.id
    with pytest.raises(BadInput):
        reg.create(name="web")
    for bad in ("../x", "-rf", "", "abc123"):
        with pytest.raises(BadInput):
            reg.create(name=bad)
    with pytest.raises(VMError, match="no current VM"):
        reg.resolve(None)
    reg.set_current(b.id)
    assert reg.resolve(None).id == b.id
    with pytest.raises(VMError, match="no VM 'nope'"):
        reg.resolve("nope")


def test_agent_reply_framing() -> None:
    out, err = b"\x00binary\nout", b"err"
    reply = (b"junk from an earlier request\nabc OUT\n" + base64.encodebytes(out)
             + b"abc ERR\n" + base64.encodebytes(err) + b"abc END 3\n")
    res = _parse_reply(reply, "abc")
    assert (res.returncode, res.stdout, res.stderr) == (3, out, err)
    with pytest.raises(VMError):
        _parse_reply(b"abc OUT\n", "abc")
    assert command_script(["echo hi; exit 2"]) == "echo hi; exit 2"
    assert command_script(["echo", "a b", "$x"]) == "echo 'a b' '$x'"


def test_changed_pages_without_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy now raises ImportError
    pages = 300
    _random_file(tmp_path / "a", pages, 5)
    data = bytearray((tmp_path / "a").read_bytes())
    for p in (0, 77, 299):
        data[p * PAGE] ^= 0xFF
    (tmp_path / "b").write_bytes(bytes(data))
    assert changed_pages(tmp_path / "a", tmp_path / "b", pages * PAGE) == [0, 77, 299]


@pytest.mark.vm
@pytest.mark.slow
def test_guest_build_from_debian_packages(tmp_path: Path) -> None:
    """A fresh cache builds a guest: the kernel from apt, an initramfs with the virtio modules and
    our init, an ext4 disk (checked with e2fsprogs' own tools) with busybox, init and agent."""
    from vers.images.guest import build_guest, find_cached

    if shutil.which("apt-get") is None or shutil.which("debugfs") is None:
        pytest.skip("needs apt-get and e2fsprogs")
    g = build_guest(tmp_path)
    assert find_cached(tmp_path) == g
    assert g.kernel.stat().st_size > 1 << 20
    listing = subprocess.run(["cpio", "-it"], input=g.initrd.read_bytes(), capture_output=True,
                             check=True).stdout.decode().split()
    for want in ("init", "bin/busybox", "sbin/vers-agent", "lib/modules/virtio_mmio.ko",
                 "lib/modules/virtio_blk.ko", "lib/modules/virtio_console.ko"):
        assert want in listing, want
    subprocess.run(["e2fsck", "-fn", str(g.disk)], check=True, capture_output=True)
    out = subprocess.run(["debugfs", "-R", "cat /sbin/vers-agent", str(g.disk)],
                         capture_output=True, check=True).stdout
    assert out.startswith(b"\x7fELF") and b"vers.agent" in out
    assert build_guest(tmp_path) == g  # cached: not rebuilt


def test_standby_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from vers.vmm.boot import RunOptions

    monkeypatch.delenv("VERS_STANDBY", raising=False)
    assert RunOptions().standby
    monkeypatch.setenv("VERS_STANDBY", "0")
    assert not RunOptions().standby


def test_commit_state_parents_and_head_move(tmp_path: Path) -> None:
    """A VM commit's parents: its base first; HEAD's tip second once HEAD moved on (asked for
    with ``merge``)."""
    from vers.repo import Repo

    mem = tmp_path / "mem"
    mem.write_bytes(bytes(4096 * 4))
    with Repo.init(tmp_path / "repo") as repo:
        first = repo.commit_state({"memory": mem}, base=None, message="first")
        assert repo.get_commit(first).parents == [] and repo.head_commit() == first
        second = repo.commit_state({"memory": mem}, base=first, message="second")
        assert repo.get_commit(second).parents == [first] and repo.head_commit() == second
        other = repo.commit_state({"memory": mem}, base=first, message="other VM",
                                  source="vm 12345678", merge=True)
        assert repo.get_commit(other).parents == [first, second]
        assert repo.head_commit() == other and repo.current_branch() == "main"


def test_teardown_keeps_the_boot_files_used_last_and_those_in_use(tmp_path: Path) -> None:
    """Restores export a commit's kernel and initrd once; a teardown keeps the few used last
    (every commit of a guest image shares them) and those a VM still boots, not the rest."""
    from vers.vmm import teardown
    reg = VMRegistry(tmp_path)
    reg.ensure()
    files = {}
    for i in range(teardown.KEEP_BOOT_FILES + 3):
        for kind in ("kernel", "initrd"):
            p = reg.layers / f"{kind}-{i:02d}"
            p.write_bytes(b"x")
            os.utime(p, (1_000_000 + i, 1_000_000 + i))  # file i used at time i
            files[kind, i] = p
    booting = _record(MachineSpec(memory=1 << 20))
    booting.boot = {"kernel": str(files["kernel", 0]), "initrd": str(files["initrd", 0])}
    teardown._remove_unused_boot_files(reg, [booting])
    newest = set(range(3, teardown.KEEP_BOOT_FILES + 3))
    for (kind, i), p in files.items():
        assert p.exists() == (i in newest or i == 0), (kind, i)
