#!/usr/bin/env bash
# The README's "main job": install everything, build the default guest, boot it, run something in
# it, commit, branch, restore, serve a page from a guest and its branch child on published ports,
# and print what happened. Safe to run again; cleans up its VMs.
#
#   bash scripts/demo.sh [DIR]      (DIR: where to put the demo repository, default a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

DEMO=${1:-$(mktemp -d /tmp/vers-demo.XXXXXX)}
mkdir -p "$DEMO"
cd "$DEMO"
[ -d .vers ] || vers init >/dev/null
cleanup() { ids=$(vers ps -q 2>/dev/null || true); [ -z "$ids" ] || vers kill $ids >/dev/null 2>&1 || true; }
trap cleanup EXIT

say "Build (or reuse) the default guest from Debian packages"
vers image build default

say "Boot it (256 MiB, $(python3 -c 'from vers.vmm.machine import detect_accel; print(detect_accel())'))"
VM=$(vers run --name demo)
echo "VM $VM"
vers exec demo -- uname -sr

say "Start a counter process in the guest and write a file to its disk"
vers exec demo -- "setsid sh -c 'i=0; while :; do i=\$((i+1)); echo \$i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &"
vers exec demo -- 'echo "written before the commit" > /root/note; sync'
sleep 1
echo "counter: $(vers exec demo -- cat /tmp/counter)"

say "Commit the running VM (memory, disk, device state)"
C1=$(vers commit -v -m "counter running")
echo "commit $C1"
sleep 1
echo "counter after commit (still running): $(vers exec demo -- cat /tmp/counter)"

say "Change some memory and commit again: only changed pages are stored"
vers exec demo -- 'dd if=/dev/urandom of=/tmp/blob bs=1M count=2 2>/dev/null; echo second > /root/note2; sync'
C2=$(vers commit -v -m "2 MiB more in /tmp")
vers log --oneline

say "Branch the live VM: the child continues from the same instant"
CHILD=$(vers branch -v --name child)
echo "child $CHILD: counter $(vers exec child -- cat /tmp/counter), note: $(vers exec child -- cat /root/note)"
vers exec child -- 'echo "only in the child" > /root/child-only; sync'
echo "parent sees child-only? $(vers exec demo -- 'test -e /root/child-only && echo yes || echo no')"

say "Restore the first commit into a new VM (QEMU -incoming from the stored device state)"
R=$(vers run-commit "$C1" --name restored)
echo "restored $R: counter $(vers exec restored -- cat /tmp/counter) (it was counting at commit time)"
sleep 1
echo "restored counter one second later: $(vers exec restored -- cat /tmp/counter)"
echo "note2 exists in the restored VM? $(vers exec restored -- 'test -e /root/note2 && echo yes || echo no') (written after $C1)"

say "Serve a page from the guest on a published port, branch it, fetch it from the child's port"
vers run --name web -p 8000 >/dev/null
vers exec web -- 'mkdir -p /www; echo "served by $(cat /run/vers/generation)" > /www/index.html; httpd -p 8000 -h /www'
port_of() { vers port "$1" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["host_port"])'; }
echo "parent, 127.0.0.1:$(port_of web): $(curl -s "http://127.0.0.1:$(port_of web)/")"
WEBCHILD=$(vers branch web --name web-child)
vers exec web-child -- 'echo "served by $(cat /run/vers/generation)" > /www/index.html'
echo "child $WEBCHILD, its own port 127.0.0.1:$(port_of web-child): $(curl -s "http://127.0.0.1:$(port_of web-child)/")"
echo "parent still serves: $(curl -s "http://127.0.0.1:$(port_of web)/")"

say "All VMs"
vers ps
say "Done: demo repository in $DEMO (VMs are stopped on exit)"
