"""The scripts baked into the default guest: initramfs /init, the guest init and the agent.

Kept as Python strings (not package data files) so that any install of vers, editable or not,
can build the guest. Their hash names the cache directory, so editing them rebuilds the guest.
"""

from __future__ import annotations

INITRAMFS_INIT = r'''#!/bin/busybox sh
# vers initramfs /init: load the virtio modules the Debian cloud kernel builds as modules (in the
# order measured to work, see docs/vmm.md), then switch to the ext4 root disk if it carries the vers
# guest init; otherwise stay in the initramfs, which carries the same init and agent.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in virtio_ring virtio virtio_mmio virtio_blk virtio_console; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
mkdir -p /newroot
if [ -b /dev/vda ] && mount -t ext4 /dev/vda /newroot && [ -x /newroot/sbin/vers-init ]; then
    umount /proc /sys
    mount --move /dev /newroot/dev
    exec switch_root /newroot /sbin/vers-init
fi
echo "vers-initramfs: no vers root disk on /dev/vda, staying in the initramfs"
exec /sbin/vers-init
'''

GUEST_INIT = r'''#!/bin/sh
# vers guest init (PID 1): mount the usual file systems, start the agent, then idle forever so
# that PID 1 never exits (and reaps orphans while it waits).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -o remount,rw / 2>/dev/null
hostname vers-guest
mkdir -p /root
/sbin/vers-agent </dev/null >/dev/console 2>&1 &
echo "vers-guest: ready"
while true; do sleep 3600; done
'''

GUEST_AGENT = r'''#!/bin/sh
# vers guest agent on the virtio-serial port named "vers.agent".
# Request: one line "ID BASE64(script)". Reply: "ID OUT", base64 of stdout, "ID ERR", base64 of
# stderr, "ID END RC". The port stays open for the agent's whole life: the virtio console driver
# drops data that arrives for a port nobody holds open, and read() returns EOF (not blocks) while no
# host client is connected, hence the sleep-and-retry.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
port=
while [ -z "$port" ]; do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = vers.agent ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] || sleep 0.1
done
exec 3<>"$port"
w=/tmp/.vers-agent
mkdir -p $w
while true; do
    if ! read -r id b64 <&3; then sleep 0.05; continue; fi
    [ -n "$id" ] || continue
    echo "$b64" | base64 -d >$w/cmd 2>/dev/null
    (cd /root && exec sh $w/cmd) </dev/null >$w/out 2>$w/err 3>&-
    rc=$?
    { echo "$id OUT"; base64 $w/out; echo "$id ERR"; base64 $w/err; echo "$id END $rc"; } >&3
done
'''
