"""The QEMU microvm driver: boot, commit, branch and restore live VMs (issue #3, docs/vmm.md).

Plain functions taking a ``vers.Repo``: ``lifecycle`` (run_vm, restore_commit, checkout, list_vms,
exec_in_vm, kill_vms, ...) and ``snapshot`` (commit_vm, branch_vm). ``backing`` is the pluggable
guest-RAM interface. The guests it boots are built by ``vers.images``.
"""
