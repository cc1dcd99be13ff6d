"""The QEMU microvm driver: boot, commit, branch and restore live VMs (docs/vmm.md).

By job: ``boot`` (run a fresh VM, restore a commit), ``commit`` and ``branch`` (the two verbs that
must keep the guest's pause short), ``control`` (list, status, pause, resume, exec, console),
``teardown`` (kill, remove, orphans), ``standby`` (child QEMUs started ahead of a branch). Under
them: ``machine`` (one QEMU process), ``state`` (VM records), ``devstate`` (device state and disk
freezes over QMP), ``disk`` (qcow2 chains), ``memory`` (guest-RAM backings), ``qmp``, ``agent``,
``net`` (published ports), ``fresh`` (clock, entropy and generation marker after a fork/restore)
(the guests it boots are built by ``vers.images``). The verbs take a ``vers.Repo``;
``vers.porcelain.vm`` is what the CLI calls.
"""
