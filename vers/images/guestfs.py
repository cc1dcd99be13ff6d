"""What vers bakes into every guest: the initramfs /init, the guest init and the agent.

The two scripts are Python strings; the agent is a small C program (vers/images/agent, package
data) compiled at image-build time. Their text is part of every image's cache key, so editing them
rebuilds images.

The init runs with the root file system's own ``/bin/sh``. When vers added a static busybox to a
root it did not build (``/sbin/busybox-vers``: busybox runs ``busybox* APPLET ARGS``
only under a name starting with busybox; see docs/guests.md), the init takes its tools from
it, so a root without ``mount`` still boots; ``vers exec`` commands always run with the root's own
``sh`` and PATH. The agent is static and needs nothing from the root.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from vers.errors import VMError

#: Every line the initramfs prints when it refuses a root disk starts with this.
INITRAMFS_ERROR = "vers-initramfs: error:"

INITRAMFS_INIT = (r'''#!/bin/busybox sh
# vers initramfs /init: load the virtio modules the Debian cloud kernel builds as modules (in the
# order measured to work, see docs/vmm.md), mount the ext4 root disk /dev/vda, add vers' init and
# agent (and a static busybox for them) if the root lacks them, and switch to it. The writes land in
# the VM's copy-on-write top layer, never in the image below. A root that cannot boot is refused
# with one "vers-initramfs: error:" line on the console, then the VM powers off. Without any
# /dev/vda it stays in the initramfs, which carries the same init and agent.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in virtio_ring virtio virtio_mmio virtio_blk virtio_console failover '''
    r'''net_failover virtio_net; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
fail() {
    echo "vers-initramfs: error: $*"
    sync
    poweroff -f
    sleep 3600
}
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
if [ ! -b /dev/vda ]; then
    echo "vers-initramfs: no root disk on /dev/vda, staying in the initramfs"
    exec /sbin/vers-init
fi
mkdir -p /newroot
err=$(mount -t ext4 /dev/vda /newroot 2>&1) ||
    fail "cannot mount /dev/vda as ext4 (${err##*: }): vers boots ext4 root file systems only"
if [ -x /newroot/sbin/vers-init ] && ! cmp -s /sbin/vers-agent /newroot/sbin/vers-agent; then
    # a root prepared by an earlier vers: its agent may speak an older protocol
    cp /sbin/vers-agent /newroot/sbin/vers-agent 2>/dev/null ||
        echo "vers-initramfs: cannot update the agent on the root file system"
fi
if [ ! -x /newroot/sbin/vers-init ]; then
    mkdir -p /newroot/sbin && cp /bin/busybox /newroot/sbin/busybox-vers ||
        fail "cannot add vers' init to the root file system (read-only or full?)"
    chroot /newroot /sbin/busybox-vers test -e /bin/sh ||
        fail "the root file system has no /bin/sh to run vers' init with"
    chroot /newroot /bin/sh -c : 2>/dev/null ||
        fail "the root file system's /bin/sh does not run on this machine (not x86_64?)"
    cp /sbin/vers-init /sbin/vers-agent /newroot/sbin/ ||
        fail "cannot add vers' init to the root file system (read-only or full?)"
    echo "vers-initramfs: added vers' init and agent to the root file system"
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/vers-init
''')

GUEST_INIT = r'''#!/bin/sh
# vers guest init (PID 1): mount the usual file systems, bring up lo and eth0 (QEMU's user-mode
# network: the fixed addresses it always hands out, so no DHCP wait), grow the root file system to
# the disk, run the image's /etc/vers/boot.d/* scripts (services such as PostgreSQL), start the
# agent, then idle forever so that PID 1 never exits (and reaps orphans while it waits).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
bb=
[ -x /sbin/busybox-vers ] && bb=/sbin/busybox-vers
$bb mount -t proc proc /proc 2>/dev/null
$bb mount -t sysfs sys /sys 2>/dev/null
$bb mount -t devtmpfs dev /dev 2>/dev/null
$bb mkdir -p /dev/pts /dev/shm /tmp /run /root
$bb mount -t devpts devpts /dev/pts 2>/dev/null
$bb mount -t tmpfs shm /dev/shm
$bb mount -t tmpfs tmp /tmp
$bb mount -t tmpfs -o mode=0755 run /run
$bb mount -o remount,rw / 2>/dev/null
echo vers-guest >/proc/sys/kernel/hostname
$bb ip link set lo up 2>/dev/null
if [ -e /sys/class/net/eth0 ]; then
    $bb ip link set eth0 up
    $bb ip addr add 10.0.2.15/24 dev eth0
    $bb ip route add default via 10.0.2.2 dev eth0
    [ -L /etc/resolv.conf ] || echo "nameserver 10.0.2.3" >/etc/resolv.conf
fi
if command -v resize2fs >/dev/null 2>&1; then
    resize2fs /dev/vda >/dev/null 2>&1
fi
for s in /etc/vers/boot.d/*; do
    [ -x "$s" ] || continue
    "$s" </dev/null >/dev/console 2>&1 || echo "vers-guest: $s failed (exit $?)"
done
/sbin/vers-agent </dev/null >/dev/console 2>&1 &
echo "vers-guest: ready"
while true; do $bb sleep 3600; done
'''

#: The agent's C source (vers/images/agent/vers-agent.c): its text is part of every image's cache
#: key, and ``install_agent`` compiles it into the image.
AGENT_SOURCE_PATH = Path(__file__).parent / "agent" / "vers-agent.c"
AGENT_SOURCE = AGENT_SOURCE_PATH.read_text()


def install_agent(dest: Path) -> None:
    """Compile the guest agent with the host's gcc, statically (it must run in any x86_64 root,
    whatever its libc), into ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.build")
    cmd = ["gcc", "-static", "-O2", "-std=c99", "-Wall", "-o", str(tmp), str(AGENT_SOURCE_PATH)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise VMError("building the guest agent needs gcc and libc6-dev: "
                      "apt-get install gcc libc6-dev") from exc
    if res.returncode != 0:
        raise VMError(f"compiling the guest agent failed: {' '.join(cmd)}\n"
                      f"{res.stderr.strip()[-2000:]}")
    tmp.chmod(0o755)
    tmp.replace(dest)


def initramfs_error(serial_log: Path) -> str | None:
    """The line the initramfs printed when it refused the root disk, if it did: the reason a boot
    failed, which belongs first in the error the user sees."""
    try:
        text = serial_log.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith(INITRAMFS_ERROR):
            return line.strip()
    return None
